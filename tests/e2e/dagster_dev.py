"""`dagster dev` (webserver, daemon and code server) on 127.0.0.1 with a temporary
DAGSTER_HOME, for end-to-end tests, and its GraphQL API."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ASSET_NODES = "{ assetNodes { assetKey { path } } }"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


@contextlib.contextmanager
def dagster_dev(env: dict, startup_s: float = 180) -> Iterator[int]:
    """Start `dagster dev` with `env`, wait until it serves the asset graph, yield its port;
    stop the whole process group afterwards."""
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + startup_s
        while True:
            try:
                if graphql(port, ASSET_NODES).get("data", {}).get("assetNodes"):
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dagster dev did not serve the asset graph within {startup_s:.0f} s")
            time.sleep(1)
        yield port
    finally:
        stop_group(proc)


def stop_group(process: subprocess.Popen, grace_s: float = 10) -> None:
    """SIGTERM the process group a server was started in; SIGKILL it after `grace_s`. On
    SIGTERM `dagster dev` waits up to 60 s for its daemon, which finishes the tick or run
    launch it is in first: in CI (2 cores, two test workers) the UI test's teardown waited the
    whole 30 s this allowed before. Nothing a test reads is written after it has finished, and
    its DAGSTER_HOME is temporary."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
  }
}
"""


def launch_partition_run(port: int, job: str, assets: list[str], partition: dict[str, str]) -> str:
    """Launch one run of `job` for a multi-partition ({dimension: key}) through the webserver,
    as the UI's launch dialog does; returns its run id."""
    tags = [{"key": "dagster/partition", "value": "|".join(partition[d] for d in sorted(partition))}]
    tags += [{"key": f"dagster/partition/{d}", "value": v} for d, v in partition.items()]
    params = {
        "selector": {
            "repositoryLocationName": "reflection_assets",
            "repositoryName": "__repository__",
            "jobName": job,
            "assetSelection": [{"path": [name]} for name in assets],
        },
        "runConfigData": {},
        "executionMetadata": {"tags": tags},
    }
    result = graphql(port, LAUNCH, {"params": params})["data"]["launchRun"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return result["run"]["runId"]


BACKFILL = """
mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}
"""
RUNS = "{ runsOrError { ... on Runs { results { runId status tags { key value } } } } }"


def launch_backfill(port: int, partitions: list[str], assets: list[str]) -> str:
    """Launch a backfill of `assets` over `partitions` as the UI does; its id."""
    launched = graphql(port, BACKFILL, {"params": {
        "partitionNames": partitions,
        "assetSelection": [{"path": [name]} for name in assets],
        "fromFailure": False,
    }})["data"]["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return launched["backfillId"]


def backfill_runs(port: int, backfill_id: str) -> list[dict]:
    """The backfill's runs so far: runId, status, tags."""
    tag = {"key": "dagster/backfill", "value": backfill_id}
    return [r for r in graphql(port, RUNS)["data"]["runsOrError"]["results"] if tag in r["tags"]]
