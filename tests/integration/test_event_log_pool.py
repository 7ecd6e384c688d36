"""Dagster's SQLite event log with one connection kept per file
(dagster_private.install_pooled_event_log): runs store and read back their events, the UI's
watch of a run still sees each new event, a wipe or a disposed instance leaves no file open,
and new run files are written from the first one Dagster set up."""

import os
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.event_log.sqlite import sqlite_event_log
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage, get_alembic_config
from dagster._core.storage.sql import check_alembic_revision

from reflection_assets import dagster_private


@pytest.fixture
def pooled(monkeypatch):
    """The patch in place for the test, and the process as it was after it."""
    for name, original in dagster_private._original_sqlite.items():
        monkeypatch.setattr(SqliteEventLogStorage, name, original)
    dagster_private.install_pooled_event_log()
    assert SqliteEventLogStorage._connect is not dagster_private._original_sqlite["_connect"]


@dg.op
def hello(context) -> None:
    context.log.info("hello from the op")


@dg.job
def tiny():
    hello()


def open_files(folder: Path) -> list[str]:
    """What this process has open under `folder` (a deleted file ends in ' (deleted)')."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found


def test_runs_store_and_read_back_their_events_with_few_files_open(pooled, tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        ids = [tiny.execute_in_process(instance=instance).run_id for _ in range(7)]
        for run_id in ids:
            assert instance.get_run_by_id(run_id).is_success
            assert any(e.user_message == "hello from the op" for e in instance.all_logs(run_id))
        held = {Path(f).name for f in open_files(tmp_path) if f.endswith(".db")}
        assert "index.db" in held and len(held) <= dagster_private.POOLED_RUN_FILES + 1, held
    assert open_files(tmp_path) == []  # disposing the instance closed them


def test_the_ui_watch_of_a_run_sees_each_new_event(pooled, instance):
    run_id = tiny.execute_in_process(instance=instance).run_id
    run = instance.get_run_by_id(run_id)
    storage = instance.event_log_storage
    seen: list[str] = []

    def callback(event, cursor) -> None:
        seen.append(event.dagster_event.message if event.dagster_event else event.user_message)

    storage.watch(run_id, None, callback)
    try:
        time.sleep(0.5)  # the watcher is scheduled
        instance.report_engine_event("a new event", run)
        deadline = time.monotonic() + 10
        while not any("a new event" in m for m in seen) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        storage.end_watch(run_id, callback)
    assert any("a new event" in m for m in seen), seen


def test_a_wipe_keeps_no_deleted_file_open_and_runs_go_on(pooled, instance, home):
    tiny.execute_in_process(instance=instance)
    instance.wipe()
    assert [f for f in open_files(home) if f.endswith(" (deleted)")] == []
    run_id = tiny.execute_in_process(instance=instance).run_id
    assert any(e.user_message == "hello from the op" for e in instance.all_logs(run_id))


def test_new_run_files_come_from_the_first_one_dagster_set_up(pooled, tmp_path, monkeypatch):
    calls = []
    original = SqliteEventLogStorage._initdb

    def counted(self, engine, for_index_shard=False):
        calls.append(str(engine.url))
        return original(self, engine, for_index_shard)

    monkeypatch.setattr(SqliteEventLogStorage, "_initdb", counted)
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        ids = [tiny.execute_in_process(instance=instance).run_id for _ in range(4)]
        run_files = [c for c in calls if not c.endswith("index.db")]
        assert len(run_files) == 1 and ids[0] in run_files[0], calls  # the other three: the template
        for run_id in ids:
            assert instance.get_run_by_id(run_id).is_success
            assert any(e.user_message == "hello from the op" for e in instance.all_logs(run_id))
            assert not any(e.user_message == "hello from the op" and e.run_id != run_id for e in instance.all_logs(run_id))
        # a template file is a Dagster run file of this version, as its own set-up leaves it
        engine = instance.event_log_storage._reflection_engines[instance.event_log_storage.conn_string_for_shard(ids[-1])]
        with engine.connect() as conn:
            db_revision, head_revision = check_alembic_revision(get_alembic_config(sqlite_event_log.__file__), conn)
            assert db_revision == head_revision and db_revision
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
