"""The embedded oracle's throughput by generation batch size and decoder, side by side in
one run.

The compact profile's phase-1 and phase-2 requests of the bundled sample's records go
through the real client and local backend on an empty cache once per batch size (the
`batch_size` oracle setting, REFLECTION_ORACLE_BATCH_SIZE) and decoder: `generate` (every
row computed until the batch's last one ends, as before) and `pruned` (engines/models/decoding.py:
a row leaves the batch when it ends, the prompts' shared beginning computed once). The
model loads once, before the timing. Prints wall time, tokens generated, tokens per second,
each row's speed against the first, and whether the pruned decoder wrote the same replies
as `generate` at that batch size. The default batch size is set from this.

.venv/bin/python benchmarks/local_batch.py [--records 64] [--sizes 16,32,64] [--decoders generate,pruned]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reflection_assets.engines.oracle.backends import LocalBackend  # noqa: E402
from reflection_assets.engines.oracle.client import OracleClient  # noqa: E402
from reflection_assets.engines.oracle.settings import OracleSettings  # noqa: E402
from reflection_assets.engines.store.storage import Database  # noqa: E402
from reflection_assets.method import compact_prompts  # noqa: E402
from reflection_assets.method.prompts import BETTER_ANSWER, NEW_INSTRUCTION  # noqa: E402


def requests_of(client: OracleClient, records: list[dict]) -> list:
    """Phase 1's instruction requests and phase 2's answer requests, as the stages send them."""
    out = []
    for section, make in ((NEW_INSTRUCTION, compact_prompts.instruction_messages), (BETTER_ANSWER, None)):
        for r in records:
            messages = (make(r["instruction"], r.get("input", "")) if make else
                        compact_prompts.response_messages(r["instruction"], r.get("input", ""), r["output"]))
            out.append(client.request(messages, "bench", compact_prompts.STOP, max_tokens=compact_prompts.MAX_TOKENS[section]))
    return out


def measure(records: list[dict], batch_size: int, decoder: str, artifacts: str) -> dict:
    LocalBackend.pruned_decoding = decoder == "pruned"
    with tempfile.TemporaryDirectory() as folder:
        client = OracleClient(OracleSettings(batch_size=batch_size), Database(Path(folder) / "db.duckdb"), artifacts)
        warm, *timed = requests_of(client, records)
        next(client.complete_many([warm]))  # the model loads outside the timing (once per process)
        started = time.perf_counter()
        replies = list(client.complete_many(timed))
        wall = time.perf_counter() - started
    tokens = sum(r.completion_tokens for r in replies)
    return {"wall": wall, "tokens": tokens, "tok_s": tokens / wall, "texts": {r.request_key: r.text for r in replies}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--sizes", default="16,32,64")
    parser.add_argument("--decoders", default="generate,pruned")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    decoders = args.decoders.split(",")
    records = json.loads((REPO / "reflection_assets" / "data" / "sample_alpaca.json").read_text())[: args.records]
    artifacts = tempfile.mkdtemp(prefix="local-batch-")
    print(f"{args.records} sample records, phase 1 and phase 2 requests ({2 * args.records - 1} timed), "
          "the embedded model (compact profile)")
    print(f"{'batch':>6}{'decoder':>10}{'wall s':>9}{'tokens':>8}{'tokens/s':>10}{'vs first':>10}  same replies as generate")
    first = None
    for size in sizes:
        reference = None
        for decoder in decoders:
            row = measure(records, size, decoder, artifacts)
            first = first or row["tok_s"]
            same = "" if reference is None else f"  {sum(reference[k] == t for k, t in row['texts'].items())} of {len(reference)}"
            reference = reference or row["texts"]
            print(f"{size:>6}{decoder:>10}{row['wall']:>9.1f}{row['tokens']:>8}{row['tok_s']:>10.1f}"
                  f"{row['tok_s'] / first:>9.2f}x{same}", flush=True)


if __name__ == "__main__":
    main()
