"""What a command pays for DuckDB's import of pandas (engines/store/no_pandas.py).

DuckDB 1.5 imports pandas and numpy on a process's first query with a parameter, to compare
the values with pandas' NaT and NA; the store never hands it a pandas object. Every command
that reads or writes the store, and every run worker, paid the import. This runs, side by
side in one run, alternating, on a store with one registered dataset:

- `reflection datasets add … --replace` and `reflection status` as they are now;
- the same with the guard taken out, as every process ran before.

Run: .venv/bin/python benchmarks/cli_pandas.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = "import sys; from reflection_assets.cli import main; sys.exit(main({argv!r}))"
UNGUARDED = ("import sys; from reflection_assets.engines.store import no_pandas, storage; "
             "sys.meta_path.remove(no_pandas._FINDER); ")
ADD = ["datasets", "add", "sample", "bundled:sample", "--limit", "32"]
COMMANDS = ([*ADD, "--replace"], ["status"])


def timed(code: str, env: dict) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=ROOT, check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REFLECTION_", "DAGSTER_"))}
        env["DAGSTER_HOME"] = home
        timed(RUN.format(argv=ADD), env)
        print(f"process start + command, median of {args.repeat}:")
        for argv in COMMANDS:
            code = RUN.format(argv=argv)
            timed(code, env)  # warm the file cache
            now, before = [], []
            for _ in range(args.repeat):
                now.append(timed(code, env))
                before.append(timed(UNGUARDED + code, env))
            a, b = statistics.median(now), statistics.median(before)
            name = "reflection " + " ".join(argv[:2])
            print(f"  {name:26} without pandas {a:.2f} s, importing it {b:.2f} s, ratio {b / a:.2f}x")


if __name__ == "__main__":
    main()
