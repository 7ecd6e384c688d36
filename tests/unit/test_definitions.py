"""The asset graph and the instance configuration, as reviewed.

Every asset's key, deps, partitions, group, pool, kinds and checks are snapshot in
tests/snapshots/asset_graph.json, so an accidental change to the graph fails here. After an
intended change: UPDATE_SNAPSHOTS=1 .venv/bin/pytest tests/unit/test_definitions.py"""

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from reflection_assets.definitions import defs

SNAPSHOT = Path(__file__).resolve().parents[1] / "snapshots" / "asset_graph.json"
REPO = Path(__file__).resolve().parents[2]


def describe_graph() -> dict:
    graph = defs.resolve_asset_graph()
    out = {}
    for key in sorted(graph.materializable_asset_keys, key=lambda k: k.to_user_string()):
        node = graph.get(key)
        partitions = node.partitions_def
        if isinstance(partitions, dg.MultiPartitionsDefinition):
            parts = [d.name for d in partitions.partitions_defs]
        else:
            parts = None if partitions is None else type(partitions).__name__
        assets_def = defs.resolve_assets_def(key)
        out[key.to_user_string()] = {
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "partitions": parts,
            "group": node.group_name,
            "pool": next(iter(assets_def.node_def.pools), None),
            "kinds": sorted(node.kinds),
            "owners": list(node.owners),
            "checks": sorted(c.name for c in node.check_keys),
            "has_description": bool(node.description),
            "automation": None if node.automation_condition is None else node.automation_condition.get_label(),
        }
    return out


def test_asset_graph_matches_snapshot():
    current = describe_graph()
    if os.environ.get("UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert current == json.loads(SNAPSHOT.read_text())


def test_definitions_validate():
    dg.Definitions.validate_loadable(defs)


def test_only_the_steps_that_run_a_model_are_in_a_pool():
    """The store is held per read or write (engines/storage.py), not per step: no `duckdb`
    pool. Training, answering, scoring, and the embedded oracle take the `gpu` pool."""
    pools = {key: node["pool"] for key, node in describe_graph().items()}
    model_steps = {"baseline_adapter", "recycled_adapter", "selective_adapter", "student_scores", "benchmark_scores"}
    assert {key for key, pool in pools.items() if pool == "gpu"} >= model_steps
    assert set(pools.values()) <= {"gpu", None}
    assert all(pools[key] is None for key in ("raw_dataset", "recycled_dataset", "selective_dataset"))


def test_the_oracle_stages_take_the_gpu_pool_only_for_the_embedded_model():
    from reflection_assets.assets.resources import oracle_pool

    assert oracle_pool({}) == "gpu" and oracle_pool({"REFLECTION_ORACLE_BACKEND": "local"}) == "gpu"
    assert oracle_pool({"REFLECTION_ORACLE_BACKEND": "openai"}) is None


def test_a_store_pool_puts_every_step_in_it():
    """REFLECTION_STORE_POOL: for a store whose file locks do not reach between processes,
    every step holds the store for its whole duration in that pool, as before."""
    from reflection_assets.assets.resources import oracle_pool, step_pool

    held = {"REFLECTION_STORE_POOL": "store", "REFLECTION_ORACLE_BACKEND": "openai"}
    assert step_pool(True, held) == step_pool(False, held) == oracle_pool(held) == "store"
    assert step_pool(True, {}) == "gpu" and step_pool(False, {}) is None


def test_instance_yaml_serializes_writers_and_frees_slots(tmp_path, monkeypatch):
    from reflection_assets.dagster_instance import write_instance_config

    home = tmp_path / "home"
    monkeypatch.delenv("DAGSTER_PG_URL", raising=False)
    write_instance_config(home)
    instance = dg.DagsterInstance.from_config(str(home))
    assert instance.telemetry_enabled is False
    assert instance.global_op_concurrency_default_limit == 1
    assert instance.run_monitoring_enabled
    assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0


def test_the_instance_yaml_follows_dagster_pg_url(tmp_path, monkeypatch):
    from reflection_assets.dagster_instance import write_instance_config
    from reflection_assets.errors import SettingsError

    home = tmp_path / "home"
    monkeypatch.delenv("DAGSTER_PG_URL", raising=False)
    config, postgres = write_instance_config(home)
    assert not postgres and "postgres" not in config.read_text().split("\n", 1)[1]
    monkeypatch.setenv("DAGSTER_PG_URL", "postgresql://u:secret@db.example:5432/dagster")
    config, postgres = write_instance_config(home)  # ours: rewritten for the storage asked for
    text = config.read_text()
    assert postgres and "env: DAGSTER_PG_URL" in text and "secret" not in text
    assert "run_launcher:" in text and "default_limit: 1" in text  # the rest of the template
    config.write_text("# someone's own\ntelemetry:\n  enabled: false\n")
    assert write_instance_config(home) == (config, False)  # someone else's file is left alone
    assert config.read_text().startswith("# someone's own")
    monkeypatch.setenv("DAGSTER_PG_URL", "mysql://nope")
    with pytest.raises(SettingsError, match="expected a postgresql:// URL"):
        write_instance_config(tmp_path / "other")


def test_loading_the_definitions_leaves_the_openai_sdk_unimported():
    """Every command, run worker and code server loads the definitions; the SDK's second
    and more is paid only by the processes that call an endpoint (benchmarks/startup.py)."""
    import subprocess
    import sys

    code = "import sys, reflection_assets.definitions, reflection_assets.cli; print('openai' in sys.modules)"
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
