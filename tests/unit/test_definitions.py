"""The asset graph and the instance configuration, as reviewed.

Every asset's key, deps, partitions, group, pool, kinds and checks are snapshot in
tests/snapshots/asset_graph.json, so an accidental change to the graph fails here. After an
intended change: UPDATE_SNAPSHOTS=1 .venv/bin/pytest tests/unit/test_definitions.py"""

import json
import os
from pathlib import Path

import dagster as dg

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


def test_every_duckdb_writer_is_in_the_duckdb_pool():
    for key, node in describe_graph().items():
        if "duckdb" in node["kinds"]:
            assert node["pool"] == "duckdb", key


def test_instance_yaml_serializes_writers_and_frees_slots(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster_home" / "dagster.yaml").read_text())
    instance = dg.DagsterInstance.from_config(str(home))
    assert instance.telemetry_enabled is False
    assert instance.global_op_concurrency_default_limit == 1
    assert instance.run_monitoring_enabled
    assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
