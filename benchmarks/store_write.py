"""What one write to the store costs on a large database, and what holding it costs others.

Issue: a step holds the store only while it reads or writes; every write opens a connection,
writes, commits and closes (DuckDB checkpoints when the last connection of a process closes).
This measures, on a store grown to about --size-gb of reply-like rows:

- open + close with nothing written;
- one write as the reply cache makes it: open, insert --rows replies, commit, close
  (the checkpoint included), through engines.store.storage.Database, i.e. under its lock;
- the same write with DuckDB's default checkpoint on close, which the store turns off;
- the same insert on a connection kept open (no open, no close, no checkpoint), side by side;
- a reader's wait: `reflection status`-like read while another process writes in a loop.

Run: .venv/bin/python benchmarks/store_write.py [--size-gb 1] [--rows 1000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reflection_assets.engines.store.storage import Database, store_lock  # noqa: E402

ROW = "SELECT md5(i::VARCHAR) || '-{n}', repeat(md5((i * 7)::VARCHAR), {reps}), i, 0.001 FROM range({start}, {end}) t(i)"


def grow(path: Path, size_gb: float) -> None:
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE IF NOT EXISTS replies (key VARCHAR PRIMARY KEY, reply VARCHAR, tokens BIGINT, cost DOUBLE)")
    start, step = 0, 200_000
    while path.stat().st_size < size_gb * 1e9:
        con.execute(f"INSERT INTO replies {ROW.format(n='g', reps=30, start=start, end=start + step)}")
        con.execute("CHECKPOINT")
        start += step
    con.close()


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def writer_loop(path: str, stop_after_s: float, rows: int) -> None:
    db = Database(path)
    end, n = time.monotonic() + stop_after_s, 0
    while time.monotonic() < end:
        with db.transaction() as con:
            con.execute(f"INSERT INTO replies {ROW.format(n=f'w{n}', reps=1, start=0, end=rows)}")
        n += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store.duckdb"
        t = time.perf_counter()
        grow(path, args.size_gb)
        print(f"store: {path.stat().st_size / 1e9:.2f} GB, grown in {time.perf_counter() - t:.0f} s")
        db = Database(path)
        with db.connect() as con:  # schema of the project applied once, as in a real store
            con.execute("SELECT 1")

        def open_close():
            with db.connect(read_only=True) as con:
                con.execute("SELECT 1").fetchone()

        counter = iter(range(10**9))

        def one_write():
            n = next(counter)
            with db.transaction() as con:
                con.execute(f"INSERT INTO replies {ROW.format(n=f'a{n}', reps=1, start=0, end=args.rows)}")

        def kept_write():
            n = next(counter)
            kept.execute("BEGIN TRANSACTION")
            kept.execute(f"INSERT INTO replies {ROW.format(n=f'k{n}', reps=1, start=0, end=args.rows)}")
            kept.execute("COMMIT")

        open_s = timed(open_close, args.repeat)
        write_s = timed(one_write, args.repeat)
        def checkpointing_write():  # DuckDB's default: the last connection's close checkpoints
            n = next(counter)
            lock = store_lock(path)
            lock.acquire(300, path)
            try:
                con = duckdb.connect(str(path))
                con.execute(f"INSERT INTO replies {ROW.format(n=f'c{n}', reps=1, start=0, end=args.rows)}")
                con.close()
            finally:
                lock.release()

        checkpoint_s = timed(checkpointing_write, args.repeat)
        kept = duckdb.connect(str(path))
        kept_s = timed(kept_write, args.repeat)
        kept.close()
        print(f"open + close, nothing written:                 {open_s * 1000:8.1f} ms")
        print(f"open, insert {args.rows} replies, commit, close: {write_s * 1000:8.1f} ms")
        print(f"insert {args.rows} replies, commit (kept open):  {kept_s * 1000:8.1f} ms")
        print(f"the same, checkpointing on close (DuckDB's default): {checkpoint_s * 1000:8.1f} ms")
        print(f"ratio short-lived / kept open:                 {write_s / kept_s:8.2f}x")
        print(f"ratio checkpointing on close / not:            {checkpoint_s / write_s:8.2f}x")

        writer = multiprocessing.get_context("spawn").Process(target=writer_loop, args=(str(path), 10.0, args.rows))
        writer.start()
        time.sleep(2.0)
        waits = []
        while writer.is_alive() and len(waits) < 20:
            t = time.perf_counter()
            with db.connect(read_only=True) as con:
                con.execute("SELECT count(*) FROM replies").fetchone()
            waits.append(time.perf_counter() - t)
            time.sleep(0.2)
        writer.join()
        if waits:
            print(
                f"a reader beside a writer in a loop: median {statistics.median(waits) * 1000:.0f} ms, "
                f"worst {max(waits) * 1000:.0f} ms over {len(waits)} reads"
            )


if __name__ == "__main__":
    main()
