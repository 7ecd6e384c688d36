"""Replies bought twice after a SIGKILL at full speed: the client with a ledger line per reply
against the same client without it (what it was before: replies reach the database once a
second, so a kill loses the last second's).

A fake OpenAI-compatible server (200 ms +- 50 ms, no server-side cap) answers N requests
sent by a worker process at concurrency C. The worker is killed with SIGKILL once half of
them are answered, then run again to the end. The server counts every request it answered
more than once: those were paid twice. Requests that were on the wire when the process died
are answered by the server but never reach the client; nothing on the client side can keep
them, so they are printed apart.

Where in the flush interval the kill lands is chance, so each client is killed --trials
times and the table shows the mean (and the worst).

.venv/bin/python benchmarks/crash_rebuy.py [--n 4000] [--concurrency 64] [--trials 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fakes.openai_server import FakeOpenAI  # noqa: E402


def trial(n: int, concurrency: int, journal: bool) -> tuple[int, int, int]:
    """(answered before the kill, in flight at the kill, bought twice)."""
    with tempfile.TemporaryDirectory() as folder, FakeOpenAI(latency_s=0.2, jitter_s=0.05) as server:
        database = Path(folder) / "db.duckdb"
        command = [sys.executable, "-m", "tests.fakes.oracle_worker", server.base_url, str(database), str(n),
                   str(concurrency)] + ([] if journal else ["--no-journal"])
        child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL)
        while server.answered < n // 2:
            time.sleep(0.01)
        in_flight = server.request_count - server.answered
        answered = server.answered
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL, check=True)
        twice = sum(count - 1 for count in server.by_body.values())
    return answered, in_flight, twice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    print(f"N={args.n}, concurrency {args.concurrency}, 200 ms per request, SIGKILL at N/2 answered, "
          f"{args.trials} trials each")
    print(f"{'client':<26}{'in flight at kill':>19}{'bought twice':>14}{'of which not in flight':>24}{'worst':>7}")
    means = {}
    for name, journal in (("flush every 1 s (before)", False), ("a ledger line per reply", True)):
        runs = [trial(args.n, args.concurrency, journal) for _ in range(args.trials)]
        in_flight = sum(r[1] for r in runs) / len(runs)
        twice = sum(r[2] for r in runs) / len(runs)
        beyond = [max(0, r[2] - r[1]) for r in runs]
        means[name] = sum(beyond) / len(beyond)
        print(f"{name:<26}{in_flight:>19.1f}{twice:>14.1f}{means[name]:>24.1f}{max(beyond):>7}")
    before, after = means.values()
    print(f"replies received before the kill and bought again: {before:.1f} -> {after:.1f} on average")


if __name__ == "__main__":
    main()
