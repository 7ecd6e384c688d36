"""What a command pays for imports it does not need: pandas for DuckDB's parameters
(engines/store/no_pandas.py), torch for the embedded model's precision in its
fingerprint (engines/oracle/settings.py: hardware_answer), and Dagster with the definitions
for a command that only reads the store (engines/store/location.py).

DuckDB 1.5 imports pandas and numpy on a process's first query with a parameter, to compare
the values with pandas' NaT and NA; the store never hands it a pandas object. And with the
default (embedded) oracle, `reflection status` and every run's observation resolved
`DTYPE=auto` with torch, which only says whether the CPU computes bfloat16; on a host
without a GPU the answer is now kept per CPU and torch version. This runs, side by side in
one run, alternating, on a store with the bundled sample's first 32 records registered:

- `reflection datasets add … --replace` and `reflection status` as they are now;
- the same with the precision asked of torch (the cache folder unusable);
- the same with the pandas guard taken out as well, as every process ran before;
- `reflection datasets list`, `doctor` and `scores`, which only read the store, as they are
  now (engines/store/location.py, without Dagster) and with the store taken from the
  definitions' `storage` resource, as before 2026-12-04.

Run: .venv/bin/python benchmarks/command_imports.py [--repeat 5]
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
STORE_ONLY = (["datasets", "list"], ["doctor"], ["scores"])
# The handlers' store through the definitions, as before engines/store/location.py.
THROUGH_DEFINITIONS = (
    "import sys; import reflection_assets.cli; from reflection_assets.definitions import resource; "
    "[setattr(m, 'storage_resource', lambda: resource('storage')) for n, m in list(sys.modules.items()) "
    "if n.startswith('reflection_assets.cli.') and hasattr(m, 'storage_resource')]; "
)


def timed(code: str, env: dict) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=ROOT, check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REFLECTION_", "DAGSTER_"))}
        env.update(DAGSTER_HOME=os.path.join(folder, "home"), XDG_CACHE_HOME=os.path.join(folder, "cache"))
        no_cache = dict(env, XDG_CACHE_HOME=os.path.join(folder, "not-a-folder", "cache"))
        Path(folder, "not-a-folder").write_text("a file: the cache cannot be read or written under it")
        timed(RUN.format(argv=ADD), env)
        print(f"process start + command, median of {args.repeat}:")
        for argv in COMMANDS:
            code = RUN.format(argv=argv)
            timed(code, env)  # warm the file cache, and the precision's
            runs: dict[str, list[float]] = {"now": [], "torch": [], "torch+pandas": []}
            for _ in range(args.repeat):
                runs["now"].append(timed(code, env))
                runs["torch"].append(timed(code, no_cache))
                runs["torch+pandas"].append(timed(UNGUARDED + code, no_cache))
            now, torch, both = (statistics.median(runs[k]) for k in runs)
            name = "reflection " + " ".join(argv[:2])
            print(f"  {name:24} now {now:.2f} s; precision from torch {torch:.2f} s ({torch / now:.2f}x); "
                  f"and pandas imported {both:.2f} s ({both / now:.2f}x)")
        for argv in STORE_ONLY:
            code = RUN.format(argv=argv)
            timed(code, env)
            runs = {"now": [], "definitions": []}
            for _ in range(args.repeat):
                runs["now"].append(timed(code, env))
                runs["definitions"].append(timed(THROUGH_DEFINITIONS + code, env))
            now, through = (statistics.median(runs[k]) for k in runs)
            name = "reflection " + " ".join(argv[:2])
            print(f"  {name:24} now {now:.2f} s; the store through the definitions {through:.2f} s ({through / now:.2f}x)")


if __name__ == "__main__":
    main()
