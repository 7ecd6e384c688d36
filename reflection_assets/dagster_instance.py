"""The Dagster instance of reflection-assets: $DAGSTER_HOME/dagster.yaml, written from the
package's template the first time a `reflection` command (or `make ui`) needs it. With
DAGSTER_PG_URL set (a postgresql:// URL), runs, event logs and schedules are kept in
PostgreSQL through dagster-postgres, the way a team deploys Dagster (a daemon and a
webserver as separate processes, sharing the instance); unset, they are SQLite files under
$DAGSTER_HOME. The URL itself is never written into the file: it is read from the
environment by every process that opens the instance."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import dagster as dg

from reflection_assets.engines.settings import dagster_home
from reflection_assets.errors import SettingsError

PG_URL_VARIABLE = "DAGSTER_PG_URL"
WRITTEN_BY = "# written by reflection-assets"
POSTGRES_STORAGE = f"""
# Runs, event logs and schedules in PostgreSQL ({PG_URL_VARIABLE}, read from the environment).
storage:
  postgres:
    postgres_url:
      env: {PG_URL_VARIABLE}
"""


def postgres_url() -> str | None:
    url = os.environ.get(PG_URL_VARIABLE) or None
    if url is not None and not url.startswith(("postgresql://", "postgres://")):
        raise SettingsError(f"{PG_URL_VARIABLE}={url.split('@')[-1]!r}: expected a postgresql:// URL")
    return url


def instance_yaml(postgres: bool) -> str:
    template = (resources.files("reflection_assets") / "instance" / "dagster.yaml").read_text()
    return f"{WRITTEN_BY} ({'postgres' if postgres else 'sqlite'})\n{template}" + (POSTGRES_STORAGE if postgres else "")


def write_instance_config(home: Path) -> tuple[Path, bool]:
    """$DAGSTER_HOME/dagster.yaml for the storage DAGSTER_PG_URL asks for: written when the
    folder has none, rewritten when the one we wrote there names the other storage (the old
    storage's files stay where they are). A dagster.yaml written by someone else is left
    alone. Returns its path and whether it keeps runs in PostgreSQL."""
    postgres = postgres_url() is not None
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    wanted = instance_yaml(postgres)
    if config.exists():
        current = config.read_text()
        if not current.startswith(WRITTEN_BY) or current == wanted:
            return config, "postgres:" in current
    config.write_text(wanted)
    return config, postgres


def ensure_instance() -> dg.DagsterInstance:
    """The instance in $DAGSTER_HOME (default ./dagster_home), its dagster.yaml written as
    above."""
    home = dagster_home()
    os.environ["DAGSTER_HOME"] = str(home)
    write_instance_config(home)
    return dg.DagsterInstance.get()
