"""The private Dagster APIs of reflection_assets/dagster_private.py, as this project uses
them. An upgrade of dagster that moves or changes any of them fails here, by name, before
it fails somewhere less obvious."""

import inspect

import dagster as dg
from dagster._core.execution.plan.active import ActiveExecution
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage, SqliteEventLogStorageWatchdog

from reflection_assets import dagster_private


def test_the_pool_wait_bug_we_patch_is_still_there():
    # Dagster computes the pause before the next claim check as min(0, ...): never positive,
    # so its in-process loop polls without sleeping. If this fails, Dagster fixed it: check
    # whether install_pool_wait is still needed.
    source = inspect.getsource(InstanceConcurrencyContext.interval_to_next_pending_claim_check)
    assert "returnmin([0," in source.replace(" ", "")


def test_what_the_pool_wait_patch_reads_exists():
    init = inspect.getsource(InstanceConcurrencyContext.__init__)
    assert "self._instance = instance" in init and "self._run_id = dagster_run.run_id" in init
    for name in ("has_pending_claims", "pending_claim_steps"):
        assert callable(getattr(InstanceConcurrencyContext, name))
    assert "self._instance_concurrency_context = instance_concurrency_context" in inspect.getsource(
        ActiveExecution.__init__
    )
    for name in ("mark_interrupted", "get_step_by_key", "sleep_til_ready"):
        assert callable(getattr(ActiveExecution, name))
    # The in-process loop still calls sleep_til_ready when no step can start.
    from dagster._core.execution.plan import execute_plan

    assert "active_execution.sleep_til_ready()" in inspect.getsource(execute_plan.inner_plan_execution_iterator)


def test_install_pool_wait_replaces_the_sleep_and_is_idempotent():
    dagster_private.install_pool_wait()
    patched = ActiveExecution.sleep_til_ready
    assert patched is not dagster_private._original_sleep
    dagster_private.install_pool_wait()
    assert ActiveExecution.sleep_til_ready.__qualname__ == patched.__qualname__


IMPORT_CHECK = """
import sys, dagster
def snapshot():
    seen = {}
    for name, module in list(sys.modules.items()):
        if name == "dagster" or name.startswith(("dagster.", "dagster_")):
            for attr, value in list(vars(module).items()):
                seen[(name, attr)] = id(value)
                if isinstance(value, type) and value.__module__ == name:
                    for key, member in list(vars(value).items()):
                        seen[(name, attr, key)] = id(member)
    return seen
import dagster._core.execution.plan.active, dagster._core.executor.in_process, dagster_duckdb
before = snapshot()
import reflection_assets.definitions
after = snapshot()
changed = sorted(str(k) for k in before if k in after and after[k] != before[k] and not k[-1].startswith("__"))
print("\\n".join(changed))
"""


def test_importing_the_definitions_leaves_dagster_as_it_was():
    """No attribute of a Dagster module or class loaded before the import is replaced by it
    (a fresh interpreter); a run of ours puts the pool wait in place (StorageResource)."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", IMPORT_CHECK], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "", f"replaced on import: {result.stdout[:2000]}"


def test_a_run_using_the_store_puts_the_pool_wait_in_place(monkeypatch, tmp_path):
    from reflection_assets.assets.resources import StorageResource

    monkeypatch.setattr(ActiveExecution, "sleep_til_ready", dagster_private._original_sleep)
    for name, original in dagster_private._original_sqlite.items():
        monkeypatch.setattr(SqliteEventLogStorage, name, original)

    @dg.asset
    def uses_the_store(storage: StorageResource) -> None: ...

    defs = dg.Definitions(assets=[uses_the_store], resources={"storage": StorageResource(database=str(tmp_path / "s.duckdb"))})
    assert ActiveExecution.sleep_til_ready is dagster_private._original_sleep
    assert defs.resolve_implicit_global_asset_job_def().execute_in_process().success
    assert ActiveExecution.sleep_til_ready is not dagster_private._original_sleep
    assert SqliteEventLogStorage._connect is not dagster_private._original_sqlite["_connect"]


def test_the_sqlite_event_log_we_patch_still_connects_per_event():
    # What install_pooled_event_log replaces: an engine and a connection per call, under the
    # storage's lock, the file's schema made on its first use. If this fails, Dagster changed
    # how it connects: check whether the patch is still needed, and still right.
    source = inspect.getsource(dagster_private._original_sqlite["_connect"])
    for line in ("with self._db_lock:", "conn_string = self.conn_string_for_shard(shard)", "poolclass=NullPool",
                 "if shard not in self._initialized_dbs:", "self._initdb(engine)", "engine.dispose()"):
        assert line in source, line
    # The UI follows a run's events by watching the run's .db file (only that file: the index
    # is not checkpointed per event), which the patch's passive checkpoint keeps writing.
    watchdog = inspect.getsource(SqliteEventLogStorageWatchdog.__init__)
    assert "event_log_storage.path_for_shard(run_id)" in watchdog and "patterns=[self._log_path]" in watchdog
    # A new run's file from the template replaces this set-up: tables, WAL mode, the stamp.
    initdb = inspect.getsource(SqliteEventLogStorage._initdb)
    for line in ("SqlEventLogStorageMetadata.create_all(engine)", 'PRAGMA journal_mode=WAL;', "stamp_alembic_rev("):
        assert line in initdb, line
    assert "os.unlink(filename)" in inspect.getsource(dagster_private._original_sqlite["wipe"])


def test_the_compute_log_tail_we_replace_is_still_looked_up_by_name():
    # install_threaded_log_tail replaces the module's execute_posix_tail: tail_to_stream must
    # still call it by that name, started before the step's stream is redirected to the file.
    from dagster._core.execution import compute_logs

    assert "execute_posix_tail(path, stream)" in inspect.getsource(compute_logs.tail_to_stream)
    mirror = inspect.getsource(compute_logs.mirror_stream_to_file)
    assert mirror.index("tail_to_stream(filepath, stream)") < mirror.index("redirect_to_file(stream, filepath)")
    assert '"tail", "-F"' in inspect.getsource(dagster_private._original_posix_tail)


def test_install_pooled_event_log_is_idempotent(monkeypatch):
    for name, original in dagster_private._original_sqlite.items():
        monkeypatch.setattr(SqliteEventLogStorage, name, original)
    dagster_private.install_pooled_event_log()
    patched = SqliteEventLogStorage._connect
    dagster_private.install_pooled_event_log()
    assert SqliteEventLogStorage._connect.__qualname__ == patched.__qualname__
    assert SqliteEventLogStorage.wipe is not dagster_private._original_sqlite["wipe"]


def test_the_health_and_staleness_types(instance):
    assert {s.name for s in dagster_private.WorkerStatus} >= {"RUNNING", "FAILED"}
    result = dagster_private.CheckRunHealthResult(dagster_private.WorkerStatus.FAILED, "gone")
    assert result.status.name == "FAILED" and result.msg == "gone"
    assert {"STALE", "FRESH"} <= {s.name for s in dagster_private.StaleStatus}
    assert {"CODE", "DATA", "DEPENDENCIES"} <= {c.name for c in dagster_private.StaleCauseCategory}
    assert {"MATERIALIZED", "FAILED", "IN_PROGRESS"} <= {s.name for s in dagster_private.AssetPartitionStatus}

    @dg.asset
    def a() -> None: ...

    resolver = dagster_private.stale_resolver(instance, dg.Definitions(assets=[a]))
    assert resolver.get_status(dg.AssetKey("a")) in set(dagster_private.StaleStatus)


def test_pool_holders_reads_the_claimed_slots(instance):
    storage = instance.event_log_storage
    storage.set_concurrency_slots("gpu", 1)
    assert storage.claim_concurrency_slot("gpu", "run-a", "step-a").is_claimed
    limit, holders = dagster_private.pool_holders(instance, "gpu")
    assert limit == 1 and [(r, s) for r, s, _ in holders] == [("run-a", "step-a")]
    assert holders[0][2] is not None  # since when
    message = dagster_private.waiting_message(instance, "gpu", "step-b")
    assert "held by run run-a (step step-a, since" in message
