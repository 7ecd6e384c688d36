"""Run the oracle client over N requests in a process of its own, printing each request's
number as its reply comes back: the subject of the kill-and-restart test and of
benchmarks/crash_rebuy.py.

python -m tests.fakes.oracle_worker BASE_URL DATABASE N [CONCURRENCY] [--no-journal]

--no-journal turns off the line the ledger writes as each reply arrives (replies then reach
it, and the database, at the flush only), which is how the client behaved before it had a
reply journal: the benchmark compares the two."""

import sys

from reflection_assets.engines.oracle.client import OracleClient
from reflection_assets.engines.store.ledger import Ledger
from reflection_assets.engines.oracle.cache import OracleCache
from reflection_assets.engines.oracle.settings import OracleSettings
from reflection_assets.engines.store.storage import Database


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    base_url, database, n = args[0], args[1], int(args[2])
    concurrency = int(args[3]) if len(args) > 3 else 8
    if "--no-journal" in sys.argv:
        Ledger.reply = lambda self, row: None  # type: ignore[method-assign]
        write = OracleCache.write
        OracleCache.write = lambda self, batch, in_ledger=False: write(self, batch)  # type: ignore[method-assign]
    settings = OracleSettings(
        backend="openai",
        model="gpt-4o-mini",
        base_url=base_url,
        api_key="sk-test-worker-key",
        max_concurrency=concurrency,
    )
    client = OracleClient(settings, Database(database), "unused")
    requests = [client.request([("user", f"question {i}")], "v1") for i in range(n)]
    number = {r.key: i for i, r in enumerate(requests)}
    for reply in client.complete_many(requests):
        print(number[reply.request_key], flush=True)


if __name__ == "__main__":
    main()
