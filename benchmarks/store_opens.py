"""What the store's opens cost when a run writes in small steps, and what the two remedies
in engines/store/storage.py save, side by side in one run.

A step writes a few rows at a time (the reply cache's flush of a few replies, a shard's
results) and reads around each write (served_by, health checks, summaries). Every open of
the file replays the write-ahead log, at about half a millisecond per commit, and the store
does not checkpoint on every close (a checkpoint rewrites the indexes: see store_write.py).
On a store grown to --size-mb of reply-like rows, this times --steps step-shaped sequences
(one one-row write, then --reads reads) four ways:

- each read and write its own connection, no checkpoint by the store (DuckDB's 16 MiB
  checkpoint_threshold alone): the store before;
- the same with the store's checkpoint rule (Database._checkpoint_due);
- each sequence in one hold (Database.held) without the rule;
- both: what the stages do now.

Run: .venv/bin/python benchmarks/store_opens.py [--size-mb 200] [--steps 300] [--reads 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reflection_assets.engines.store import hold  # noqa: E402
from reflection_assets.engines.store.storage import Database  # noqa: E402


def grow(path: Path, size_mb: float) -> None:
    with Database(path).connect():
        pass  # the project's schema
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE replies (key VARCHAR PRIMARY KEY, reply VARCHAR, tokens BIGINT)")
    start = 0
    while path.stat().st_size < size_mb * 1e6:
        con.execute(f"INSERT INTO replies SELECT md5(i::VARCHAR), repeat(md5((i * 7)::VARCHAR), 30), i "
                    f"FROM range({start}, {start + 50_000}) t(i)")
        con.execute("CHECKPOINT")
        start += 50_000
    con.close()


def steps(path: Path, n: int, reads: int, hold: bool, rule: bool, tag: str) -> tuple[float, int]:
    db = Database(path)
    original = Database.__dict__["_checkpoint_due"]
    if not rule:
        Database._checkpoint_due = staticmethod(lambda lock: False)
    try:
        started = time.perf_counter()
        for i in range(n):
            with db.held() if hold else nullcontext():
                with db.transaction() as con:
                    con.execute("INSERT INTO replies VALUES (?, ?, 1)", [f"{tag}{i}", "y" * 2000])
                for _ in range(reads):
                    with db.connect(read_only=True) as con:
                        con.execute("SELECT count(*) FROM replies WHERE key LIKE ?", [f"{tag}%"]).fetchone()
        elapsed = time.perf_counter() - started
    finally:
        Database._checkpoint_due = original
    wal = path.with_name(path.name + ".wal")
    left = wal.stat().st_size if wal.exists() else 0
    duckdb.connect(str(path)).execute("CHECKPOINT").close()  # the next way starts from a checkpointed store
    return elapsed, left


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=200)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--reads", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store.duckdb"
        grow(path, args.size_mb)
        print(f"store: {path.stat().st_size / 1e6:.0f} MB; {args.steps} steps of one one-row write and "
              f"{args.reads} reads")
        results = {}
        for name, hold, rule in (("a connection each, no checkpoint rule (before)", False, False),
                                 ("a connection each, checkpoint rule", False, True),
                                 ("one hold per step, no checkpoint rule", True, False),
                                 ("one hold per step, checkpoint rule (now)", True, True)):
            hold._store_locks.clear()  # what this process learned about the store starts anew
            seconds, wal = steps(path, args.steps, args.reads, hold, rule, tag=f"{len(results)}-")
            results[name] = seconds
            print(f"  {name:<48} {seconds:7.1f} s  ({seconds / args.steps * 1000:6.1f} ms a step, "
                  f"WAL at the end {wal / 1e6:5.2f} MB)")
        before = results["a connection each, no checkpoint rule (before)"]
        for name, seconds in results.items():
            print(f"  {name:<48} {before / seconds:6.2f}x faster than before")


if __name__ == "__main__":
    main()
