"""The whole definitions and the instance configuration, as reviewed.

tests/snapshots/definitions.json holds what review should see change: every asset (key,
deps with their partition mappings, partitions, group, pool, kinds, owners, checks,
automation, code version), the observed sources, the jobs (selection, executor), the
schedules, the sensors and the resources. An accidental change to the graph fails here;
after an intended one: UPDATE_SNAPSHOTS=1 .venv/bin/pytest tests/unit/test_definitions.py"""

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from reflection_assets.definitions import defs

SNAPSHOT = Path(__file__).resolve().parents[1] / "snapshots" / "definitions.json"
REPO = Path(__file__).resolve().parents[2]


def _partitions(partitions) -> list[str] | str | None:
    if isinstance(partitions, dg.MultiPartitionsDefinition):
        return [d.name for d in partitions.partitions_defs]
    return None if partitions is None else type(partitions).__name__


def describe_graph() -> dict:
    graph = defs.resolve_asset_graph()
    out = {}
    for key in sorted(graph.materializable_asset_keys, key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets_def = defs.resolve_assets_def(key)
        mappings = {}
        for parent in node.parent_keys:
            if graph.get(parent).is_partitioned:
                mapping = assets_def.get_partition_mapping(parent)
                mappings[parent.to_user_string()] = "default" if mapping is None else type(mapping).__name__
        out[key.to_user_string()] = {
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "partition_mappings": mappings,
            "partitions": _partitions(node.partitions_def),
            "group": node.group_name,
            "pool": next(iter(assets_def.node_def.pools), None),
            "kinds": sorted(node.kinds),
            "owners": list(node.owners),
            "checks": sorted(c.name for c in node.check_keys),
            "has_description": bool(node.description),
            "automation": None if node.automation_condition is None else node.automation_condition.get_label(),
            "code_version": node.code_version,
        }
    return out


def describe_definitions() -> dict:
    graph = defs.resolve_asset_graph()
    sources = {}
    for key in sorted(graph.observable_asset_keys, key=lambda k: k.to_user_string()):
        node = graph.get(key)
        sources[key.to_user_string()] = {
            "group": node.group_name,
            "partitions": _partitions(node.partitions_def),
            "has_description": bool(node.description),
            "auto_observe_interval_minutes": node.auto_observe_interval_minutes,
        }
    jobs = {}
    for unresolved in sorted(defs.jobs, key=lambda j: j.name):
        job = defs.resolve_job_def(unresolved.name)
        jobs[job.name] = {
            "assets": sorted(k.to_user_string() for k in job.asset_layer.selected_asset_keys),
            "executor": job.executor_def.name,
            "partitions": _partitions(job.partitions_def),
            "has_description": bool(job.description),
        }
    schedules = {
        s.name: {"cron": s.cron_schedule, "timezone": s.execution_timezone, "job": s.job_name,
                 "default_status": s.default_status.value}
        for s in defs.schedules
    }
    sensors = {
        s.name: {"type": type(s).__name__, "minimum_interval_seconds": s.minimum_interval_seconds,
                 "default_status": s.default_status.value,
                 "targets": sorted(k.to_user_string() for k in s.asset_selection.resolve(graph))}
        for s in defs.sensors
    }
    return {
        "assets": describe_graph(),
        "sources": sources,
        "jobs": jobs,
        "schedules": schedules,
        "sensors": sensors,
        "executor": defs.executor.name,
        "resources": {name: type(resource).__name__ for name, resource in sorted(defs.resources.items())},
    }


def test_definitions_match_the_snapshot():
    current = describe_definitions()
    if os.environ.get("UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    snapshot = json.loads(SNAPSHOT.read_text())
    for part in snapshot:  # one assertion per part: the failure names what changed
        assert current[part] == snapshot[part], f"{part} changed (UPDATE_SNAPSHOTS=1 after an intended change)"
    assert current.keys() == snapshot.keys()


def test_definitions_validate():
    dg.Definitions.validate_loadable(defs)


def test_only_the_steps_that_run_a_model_are_in_a_pool():
    """The store is held per read or write (engines/store/storage.py), not per step: no `duckdb`
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


def test_the_commands_that_only_read_the_store_leave_dagster_unimported(tmp_path):
    """`datasets list`, `doctor`, `scores`, `adapters`, `lineage`, `export` and `batch list`
    take the store without the definitions (engines/store/location.py): a second of each
    command's start (benchmarks/command_imports.py)."""
    import os
    import subprocess
    import sys

    commands = [["datasets", "list"], ["doctor"], ["scores"], ["scores", "--json"], ["adapters"], ["batch", "list"],
                ["testsets", "list"], ["lineage", "abcdef0"], ["export", "nope", "--format", "jsonl", "--out", str(tmp_path / "x.jsonl")]]
    code = ("import sys; from reflection_assets.cli import main\n"
            "for argv in {commands!r}:\n"
            "    code = main(argv)\n"
            "    assert code in (0, 2), (argv, code)\n"
            "    assert 'dagster' not in sys.modules, argv\n"
            "print('ok')").format(commands=commands)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REFLECTION_", "DAGSTER_"))}
    env["DAGSTER_HOME"] = str(tmp_path / "home")
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=REPO, capture_output=True, text=True, env=env)
    assert done.stdout.splitlines()[-1:] == ["ok"], done.stdout + done.stderr


def test_every_serial_test_is_in_a_file_make_test_runs_alone():
    """`make test` collects the serial phase from SERIAL_FILES alone: a test marked serial
    anywhere else would run in neither phase."""
    import re

    makefile = (REPO / "Makefile").read_text()
    listed = set(re.search(r"^SERIAL_FILES := (.+)$", makefile, re.M).group(1).split())
    marked = {str(path.relative_to(REPO)) for path in (REPO / "tests").rglob("test_*.py")
              if re.search(r"pytest\.mark\.serial\b", path.read_text())}
    assert marked and marked == listed
