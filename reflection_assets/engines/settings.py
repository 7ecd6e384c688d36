"""Settings read from the environment: where state lives and how records are sharded.

Defaults sit under ./dagster_home; REFLECTION_DUCKDB, REFLECTION_ARTIFACTS and DAGSTER_HOME
override them, for the CLI, the UI and the tests alike.

Every other setting is a field of a Dagster resource (assets/resources.py, built by
definitions.code_location_resources, which the CLI gets through definitions.resource; the
commands that only use the store take engines/store/location.py instead). These
few cannot be: the shard count fixes the partitions when the definitions load, and the
paths are where the instance and the store live before any resource is built (the storage
resource's empty `database` and `artifacts` fields fall back to them)."""

from __future__ import annotations

import os
from pathlib import Path

from reflection_assets.errors import SettingsError


def dagster_home() -> Path:
    return Path(os.environ.get("DAGSTER_HOME") or "dagster_home").expanduser().resolve()


def default_database() -> str:
    return str(Path(os.environ.get("REFLECTION_DUCKDB") or dagster_home() / "reflection.duckdb"))


def default_artifacts() -> str:
    return str(Path(os.environ.get("REFLECTION_ARTIFACTS") or dagster_home() / "artifacts"))


DEFAULT_SHARDS = 16


def shard_count() -> int:
    """Shards per dataset (REFLECTION_SHARDS, default 16: ~3,250 records each for 52k).

    Partition keys are fixed when the definitions load, so this is read once per process.
    Changing it reassigns records to shards: re-materialize raw_dataset afterwards.
    """
    raw = os.environ.get("REFLECTION_SHARDS") or str(DEFAULT_SHARDS)
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"REFLECTION_SHARDS={raw!r}: expected a whole number from 1 to 1024") from None
    if not 1 <= value <= 1024:
        raise SettingsError(f"REFLECTION_SHARDS={raw!r}: expected a whole number from 1 to 1024")
    return value


def cpu_threads() -> int:
    """CPU threads a process that runs a model uses (REFLECTION_THREADS, default every core;
    the processes of one training share them). Set it where several such processes share
    the cores, as the test suite's workers do: torch's threads spin while they wait, and two
    processes with a thread per core each slow each other far more than twice."""
    cores = max(1, os.cpu_count() or 1)
    raw = os.environ.get("REFLECTION_THREADS")
    if not raw:
        return cores
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"REFLECTION_THREADS={raw!r}: expected a whole number of threads from 1") from None
    if value < 1:
        raise SettingsError(f"REFLECTION_THREADS={raw!r}: expected a whole number of threads from 1")
    return value


def pool_report_s() -> float:
    """How often a run waiting for a pool slot says who holds it (REFLECTION_POOL_REPORT_S,
    default 30 seconds)."""
    raw = os.environ.get("REFLECTION_POOL_REPORT_S") or "30"
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"REFLECTION_POOL_REPORT_S={raw!r}: expected a number of seconds") from None
    if value <= 0:
        raise SettingsError(f"REFLECTION_POOL_REPORT_S={raw!r}: expected a number of seconds above 0")
    return value
