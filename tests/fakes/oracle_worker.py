"""Run the oracle client over N requests in a process of its own, printing each request's
number as its reply comes back: the subject of the kill-and-restart test.

python -m tests.fakes.oracle_worker BASE_URL DATABASE N"""

import sys

from reflection_assets.engines.oracle.client import OracleClient
from reflection_assets.engines.oracle.settings import OracleSettings
from reflection_assets.engines.storage import Database


def main() -> None:
    base_url, database, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    settings = OracleSettings(
        backend="openai",
        model="gpt-4o-mini",
        base_url=base_url,
        api_key="sk-test-worker-key",
        max_concurrency=8,
        flush_interval_s=0.2,
    )
    client = OracleClient(settings, Database(database), "unused")
    requests = [client.request([("user", f"question {i}")], "v1") for i in range(n)]
    number = {r.key: i for i, r in enumerate(requests)}
    for reply in client.complete_many(requests):
        print(number[reply.request_key], flush=True)


if __name__ == "__main__":
    main()
