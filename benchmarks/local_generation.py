"""The embedded oracle's generation with and without the stop at [End], side by side.

The compact profile's requests (the sample's records, phase 1's new instructions and phase
2's better answers) go through the real client and local backend twice, each time on an
empty cache: once as the pipeline sends them (`stop=["[End]"]`), once without the stop. The
model usually ends a section with its end-of-turn token, not with [End]; where it does
write [End] (phase 1, after its worked example), the stop saves what it would write next.
Prints wall time, tokens generated, tokens per second and the parse outcomes for each.

.venv/bin/python benchmarks/local_generation.py [--records 64] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reflection_assets.engines.oracle.client import OracleClient  # noqa: E402
from reflection_assets.engines.oracle.settings import OracleSettings  # noqa: E402
from reflection_assets.engines.store.storage import Database  # noqa: E402
from reflection_assets.method import compact_prompts  # noqa: E402
from reflection_assets.method.parsing import parse_continuation  # noqa: E402
from reflection_assets.method.prompts import BETTER_ANSWER, NEW_INSTRUCTION  # noqa: E402


def measure(records: list[dict], section: str, stop: bool, batch_size: int, artifacts: str) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        client = OracleClient(OracleSettings(batch_size=batch_size), Database(Path(folder) / "db.duckdb"), artifacts)
        if section == NEW_INSTRUCTION:
            messages = [compact_prompts.instruction_messages(r["instruction"], r.get("input", "")) for r in records]
            originals = [r["instruction"] for r in records]
        else:
            messages = [compact_prompts.response_messages(r["instruction"], r.get("input", ""), r["output"]) for r in records]
            originals = [r["output"] for r in records]
        requests = [
            client.request(m, "bench", compact_prompts.STOP if stop else (), max_tokens=compact_prompts.MAX_TOKENS[section])
            for m in messages
        ]
        client.complete_many(requests[:1]).__next__()  # load the model outside the timing
        started = time.perf_counter()
        replies = {r.request_key: r for r in client.complete_many(requests[1:])}
        wall = time.perf_counter() - started
        outcomes = Counter(
            parse_continuation(replies[q.key].text, section, replies[q.key].finish_reason, None, original).outcome
            for q, original in zip(requests[1:], originals[1:], strict=True)
        )
        tokens = sum(r.completion_tokens for r in replies.values())
    return {"wall": wall, "tokens": tokens, "tok_s": tokens / wall, "outcomes": dict(outcomes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    records = json.loads((REPO / "reflection_assets" / "data" / "sample_alpaca.json").read_text())[: args.records + 1]
    artifacts = tempfile.mkdtemp(prefix="local-generation-")
    print(f"{args.records} sample records, batch {args.batch_size}, the embedded model (compact profile)")
    print(f"{'section':<18}{'stop at [End]':<15}{'wall s':>8}{'tokens':>8}{'tokens/s':>10}  outcomes")
    for section in (NEW_INSTRUCTION, BETTER_ANSWER):
        rows = {}
        for stop in (True, False):
            rows[stop] = measure(records, section, stop, args.batch_size, artifacts)
            r = rows[stop]
            print(f"{section:<18}{'yes' if stop else 'no':<15}{r['wall']:>8.1f}{r['tokens']:>8}{r['tok_s']:>10.1f}  {r['outcomes']}")
        print(f"{'':<18}with the stop: {rows[False]['wall'] / rows[True]['wall']:.2f}x the speed, "
              f"{rows[True]['tokens'] / max(rows[False]['tokens'], 1):.2f}x the tokens")


if __name__ == "__main__":
    main()
