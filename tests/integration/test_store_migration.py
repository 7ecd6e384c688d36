"""A store written by the release before the store was held per read or write opens with
this code, and keeps everything: tests/snapshots/store_827a3e5.duckdb.gz is the database of
tests/e2e/test_small_dataset.py as main at 827a3e5 wrote it (oracle replies, adapters,
student scores, benchmark answers and scores; 186 KB compressed)."""

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb

from reflection_assets.engines.store.storage import Database

SNAPSHOT = Path(__file__).resolve().parents[1] / "snapshots" / "store_827a3e5.duckdb.gz"
BIN = os.path.dirname(sys.executable)


def table_counts(path: Path) -> dict[str, int]:
    with duckdb.connect(str(path), read_only=True) as con:
        tables = con.execute(
            "SELECT schema_name || '.' || table_name FROM duckdb_tables() WHERE NOT temporary ORDER BY 1"
        ).fetchall()
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for (t,) in tables}


def test_a_store_of_the_previous_release_opens_and_keeps_everything(tmp_path):
    store = tmp_path / "home" / "reflection.duckdb"
    store.parent.mkdir()
    with gzip.open(SNAPSHOT) as packed, store.open("wb") as out:
        shutil.copyfileobj(packed, out)
    before = table_counts(store)
    assert before["oracle.replies"] == 123 and before["training.adapters"] == 3
    assert before["selection.student_scores"] == 160 and before["bench.scores"] == 4
    assert "registry.schema_applied" not in before

    with Database(store).connect() as con:  # the new code's first write connection: schema applied
        con.execute("INSERT INTO registry.testsets (name, source) VALUES ('later', 'bundled:x')")
    after = table_counts(store)  # read-only, with whatever the WAL holds: nothing of the DDL
    assert after.pop("registry.schema_applied") == 1
    assert after.pop("registry.testsets") == before.pop("registry.testsets") + 1
    assert after == before  # every reply, batch, adapter, score and answer kept

    env = dict(os.environ, DAGSTER_HOME=str(store.parent), REFLECTION_SHARDS="16")
    env.pop("REFLECTION_DUCKDB", None)
    def reflection(*args: str) -> str:
        done = subprocess.run([os.path.join(BIN, "reflection"), *args], capture_output=True, text=True, env=env,
                              timeout=300)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        return done.stdout

    assert "instruction                     40 calls" in reflection("status", "--dataset", "h")
    scores = reflection("scores", "--dataset", "h")
    assert "recycled_vs_baseline     bundled              0     3     0" in scores
    assert "selective on recycled  answers (11 examples)" in scores
