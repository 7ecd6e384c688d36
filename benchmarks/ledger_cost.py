"""What the ledger costs per reply: the reply cache's writer storing N replies with the
ledger (a line per reply as it arrives, fsynced before each flush to the store, compressed
when the process is done) against the same writer without it, side by side in one run.

The replies are shaped like the real thing: the paper's phase-1 reflection prompt around
distinct pairs, and replies of the length a GPT-4-class oracle writes (a critique, a new
instruction and a longer answer), each text drawn from the bundled sample's vocabulary so
that it compresses as English does.
They are handed to the writer as fast as it takes them, which is the worst case: a real
oracle delivers at most a few hundred a second.

Run: .venv/bin/python benchmarks/ledger_cost.py [--n 10000] [--flush-s 1.0] [--trials 3]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reflection_assets.engines.store.ledger import Ledger, ledger_folder  # noqa: E402
from reflection_assets.engines.oracle.cache import CacheWriter, OracleCache  # noqa: E402
from reflection_assets.engines.oracle.replies import OracleReply  # noqa: E402
from reflection_assets.engines.oracle.settings import OracleSettings  # noqa: E402
from reflection_assets.engines.store.storage import Database  # noqa: E402
from reflection_assets.method.profiles import PAPER_PROFILE  # noqa: E402
from reflection_assets.method.prompts import instruction_reflection  # noqa: E402
from reflection_assets.method.requests import OracleRequest  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "reflection_assets" / "data" / "sample_alpaca.json"


def replies(n: int) -> list[tuple[OracleRequest, OracleReply]]:
    """N distinct requests and replies: the paper's phase-1 prompt around a pair of words
    drawn from the sample's own vocabulary (so each is as compressible as English, not a
    repeat of the 128 sample records), with replies of a GPT-4-class oracle's length."""
    records = json.loads(SAMPLE.read_text())
    vocabulary = sorted({w for r in records for w in f"{r['instruction']} {r['output']}".split()})
    rng = random.Random(0)
    words = lambda k: " ".join(rng.choice(vocabulary) for _ in range(k))  # noqa: E731
    sampling = OracleSettings(backend="openai", model="gpt-4o-mini").sampling
    pairs = []
    for i in range(n):
        instruction, answer = words(rng.randint(8, 30)) + "?", words(rng.randint(40, 160)) + "."
        request = OracleRequest(tuple(instruction_reflection(instruction, "", answer)), sampling, PAPER_PROFILE.version)
        text = (
            f"1. Complexity: {words(25)}. 2. Relevance: {words(20)}. 3. Depth: {words(25)}. 4. Detail: {words(20)}.\n\n"
            f"[New Instruction] {instruction} {words(20)} [End]\n[New Answer] {words(rng.randint(120, 260))} [End]"
        )
        reply = OracleReply(
            request.key, "fp", text, "stop", prompt_tokens=len(str(request.messages)) // 4,
            completion_tokens=len(text) // 4, cost_usd=0.0004, latency_s=2.1, attempts=1,
        )
        pairs.append((request, reply))
    return pairs


def trial(pairs, flush_s: float, with_ledger: bool) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        db = Database(Path(folder) / "db.duckdb")
        with db.connect():
            pass  # made, as the client's first lookup makes it
        cache = OracleCache(db)
        cache.ledger = Ledger(ledger_folder(db.path))  # this trial's own, sealed below
        if not with_ledger:  # the writer as it was before the ledger
            cache.ledger.reply = lambda row: None
            cache.ledger.sync = lambda: None
        started = time.perf_counter()
        writer = CacheWriter(cache, flush_s, lambda batch: None)
        add_s = 0.0
        for request, reply in pairs:
            t = time.perf_counter()
            writer.add(request, reply)
            add_s += time.perf_counter() - t
        writer.close()
        stored_s = time.perf_counter() - started
        folder_path = ledger_folder(db.path)
        plain = sum(p.stat().st_size for p in folder_path.glob("*")) if folder_path.exists() else 0
        t = time.perf_counter()
        cache.ledger.close()  # what the process's exit does: compress the segment
        seal_s = time.perf_counter() - t
        sealed = sum(p.stat().st_size for p in folder_path.glob("*")) if folder_path.exists() else 0
        return {"stored_s": stored_s, "add_us": add_s / len(pairs) * 1e6, "seal_s": seal_s,
                "plain": plain, "sealed": sealed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--flush-s", type=float, default=1.0, help="the oracle client's flush interval")
    parser.add_argument("--trials", type=int, default=3, help="each side; the fastest is shown")
    args = parser.parse_args()
    pairs = replies(args.n)
    size = sum(len(json.dumps(r.canonical())) + len(p.text) for r, p in pairs) / len(pairs)
    print(f"{args.n} replies (request + reply text {size / 1024:.1f} KiB on average), flush every {args.flush_s} s, "
          f"fastest of {args.trials} trials each")
    runs = {False: [], True: []}
    for _ in range(args.trials):  # alternated, so that drift in the machine falls on both
        for with_ledger in (False, True):
            runs[with_ledger].append(trial(pairs, args.flush_s, with_ledger))
    without, with_ = (min(runs[w], key=lambda r: r["stored_s"]) for w in (False, True))
    print(f"{'':<18}{'all stored':>12}{'add() per reply':>17}{'compress at exit':>18}{'ledger on disk':>22}")
    for name, r in (("without ledger", without), ("with ledger", with_)):
        ledger = f"{r['plain'] / 1e6:.1f} MB -> {r['sealed'] / 1e6:.1f} MB" if r["sealed"] else "-"
        print(f"{name:<18}{r['stored_s']:>11.2f}s{r['add_us']:>15.1f}us{r['seal_s']:>17.2f}s{ledger:>22}")
    per = (with_["stored_s"] - without["stored_s"]) / args.n * 1e6
    print(f"time to store every reply: {with_['stored_s'] / without['stored_s']:.2f}x ({per:+.0f} us per reply), "
          f"plus {with_['seal_s']:.2f} s once at exit; the ledger on disk: {with_['sealed'] / args.n:.0f} bytes per reply, "
          f"{size * args.n / with_['sealed']:.1f}x smaller than the requests and replies it holds")


if __name__ == "__main__":
    main()
