"""Which shards a stage has written. A dataset smaller than a few times the shard count
leaves shards empty; a stage run on an empty shard is done with nothing to do, and the
stages and commands tell that apart from a shard never materialized."""

from __future__ import annotations

import duckdb

from reflection_assets.engines.store.queries import queries
from reflection_assets.errors import UserError

SQL = queries("data_shards")

# Each record-level stage and the stage whose rows it reads.
UPSTREAM = {
    "reflected_instructions": "raw_dataset",
    "reflected_responses": "reflected_instructions",
    "recycled_dataset": "reflected_responses",
    "student_scores": "reflected_responses",
    "selective_dataset": "student_scores",
}


class ShardNotMaterialized(UserError):
    """A stage's input was never materialized for a shard. The message says what to run."""


def mark_written(con: duckdb.DuckDBPyConnection, stage: str, dataset: str, shard: int, rows: int) -> None:
    """Record that `stage` wrote `rows` rows for the shard; call inside the stage's transaction."""
    con.execute(SQL.mark_written, [stage, dataset, shard, rows])


def written_shards(con: duckdb.DuckDBPyConnection, stage: str, dataset: str) -> dict[int, int]:
    """{shard: rows} of every shard `stage` has written for the dataset."""
    return dict(con.execute(SQL.written_shards, [stage, dataset]).fetchall())


def require_upstream(
    con: duckdb.DuckDBPyConnection, stage: str, dataset: str, shard: int, upstream: str | None = None
) -> None:
    """For a stage whose input is empty: the input must be empty because its stage ran on
    an empty shard, not because it never ran (`upstream`: when not the usual one)."""
    upstream = upstream or UPSTREAM[stage]
    if shard not in written_shards(con, upstream, dataset):
        raise ShardNotMaterialized(
            f"{dataset}|{shard:02d}: {upstream} has not been materialized for this shard: materialize it first"
        )
