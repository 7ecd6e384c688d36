"""What a process pays before it does anything: importing the definitions.

Every `reflection` command, every Dagster run worker, the daemon and `dagster dev`'s code
server import reflection_assets.definitions; the test suite starts hundreds of them. The
openai SDK took over a second of that import, although most processes never call an
endpoint (a run of raw_dataset, student_scores or an adapter; `reflection status`). It is
now imported where it is used. This measures, side by side in one run, alternating:

- `import reflection_assets.definitions` as it is now;
- the same with the SDK imported first, as every process did before.

Run: .venv/bin/python benchmarks/startup.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOW = "import sys, reflection_assets.definitions; assert 'openai' not in sys.modules"
BEFORE = "import openai, reflection_assets.definitions"


def timed(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=ROOT, check=True, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    timed(NOW)  # warm the file cache
    now, before = [], []
    for _ in range(args.repeat):
        now.append(timed(NOW))
        before.append(timed(BEFORE))
    a, b = statistics.median(now), statistics.median(before)
    print(f"process start + import of the definitions, median of {args.repeat}:")
    print(f"  openai imported where used   {a:.2f} s")
    print(f"  openai imported at load      {b:.2f} s")
    print(f"  ratio                        {b / a:.2f}x")


if __name__ == "__main__":
    main()
