"""Shared fixtures: every test gets its own DAGSTER_HOME, DuckDB file and artifacts folder."""

from __future__ import annotations

import os

# Four shards keep each test to a few Dagster runs; read when the definitions load.
os.environ.setdefault("REFLECTION_SHARDS", "4")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import dagster as dg  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary DAGSTER_HOME holding the dagster.yaml the package writes (SQLite); the
    database and artifacts live inside it, as they do by default."""
    from reflection_assets.dagster_instance import write_instance_config

    home = tmp_path / "dagster_home"
    monkeypatch.delenv("DAGSTER_PG_URL", raising=False)
    write_instance_config(home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.delenv("REFLECTION_DUCKDB", raising=False)
    monkeypatch.delenv("REFLECTION_ARTIFACTS", raising=False)
    return home


@pytest.fixture
def instance(home: Path):
    with dg.instance_for_test(temp_dir=str(home)) as inst:
        yield inst


@pytest.fixture(scope="session")
def shared_artifacts(tmp_path_factory):
    """One conversion of the embedded model for every test that loads it."""
    return tmp_path_factory.mktemp("artifacts")


def write_json(path: Path, rows: list) -> Path:
    path.write_text(json.dumps(rows, ensure_ascii=False))
    return path


def alpaca_rows(n: int, with_input_every: int = 3, seed: str = "") -> list[dict]:
    """n distinct Alpaca records; every `with_input_every`-th has an input."""
    return [
        {
            "instruction": f"Task {seed}{i}: explain item {i} in a sentence.",
            "input": f"context for item {i}" if i % with_input_every == 0 else "",
            "output": f"Item {i} is explained here, answer {seed}{i * 7}.",
        }
        for i in range(n)
    ]
