"""The set-up of `make test` on a fresh clone: uv installing what pip would (the Makefile's
UV_FROM_PIP, with pip's own index settings) against pip installing it (the Makefile's
fallback, forced with `make UV=false`), side by side in one run, alternating.

Each round clones this repository (its last commit) into a temporary folder twice and runs
`make .venv/.installed-test` in each, once per installer, each with an empty uv cache of
its own (a first set-up on a new machine); both then byte-compile every file on every core
alike. It prints each set-up's seconds, the medians and their ratio, and whether both
environments hold the same packages at the same versions. It needs the package index (about
a minute of downloads per set-up) and about 6 GB of temporary space; it is not part of
`make bench`.

Run: python3 benchmarks/setup_install.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETUP = ".venv/.installed-test"


def packages(clone: Path) -> set[str]:
    """name==version of every distribution in the clone's environment but uv itself and the
    project (pip freeze names its editable install by path)."""
    frozen = subprocess.run([str(clone / ".venv/bin/python"), "-m", "pip", "freeze"], capture_output=True,
                            text=True, check=True).stdout.splitlines()
    return {line.lower() for line in frozen if "==" in line and not line.lower().startswith(("uv==", "reflection-assets"))}


def set_up(kind: str, folder: Path) -> tuple[float, set[str]]:
    clone = folder / f"clone-{kind}"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = dict(os.environ, UV_CACHE_DIR=str(folder / f"uv-cache-{kind}"))
    command = ["make", "-C", str(clone), SETUP] + (["UV=false"] if kind == "pip" else [])
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{kind}: make {SETUP} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    # The line the fallback echoes (make also prints the recipe, which holds the same words).
    if kind == "uv" and "uv did not install the environment: pip installs it" in done.stdout.splitlines():
        raise SystemExit("uv: the set-up fell back to pip; nothing to compare")
    return seconds, packages(clone)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"pip": [], "uv": []}
    installed: dict[str, set[str]] = {}
    for round_ in range(1, args.rounds + 1):
        for kind in ("pip", "uv") if round_ % 2 else ("uv", "pip"):
            with tempfile.TemporaryDirectory(prefix=f"setup-{kind}-") as folder:
                seconds, installed[kind] = set_up(kind, Path(folder))
            times[kind].append(seconds)
            print(f"round {round_}: {kind} {seconds:.1f} s ({len(installed[kind])} packages)", flush=True)
    pip, uv = statistics.median(times["pip"]), statistics.median(times["uv"])
    print(f"median: pip {pip:.1f} s, uv {uv:.1f} s: uv takes {uv / pip:.2f}x pip's time ({pip / uv:.2f}x faster)")
    differ = installed["pip"] ^ installed["uv"]
    print("the same packages at the same versions" if not differ else f"they differ: {sorted(differ)}")


if __name__ == "__main__":
    main()
