"""A run's process keeps the store open between its accesses (Database.lingering,
engines/store/storage.py): the accesses after the first share its open; another process that
waits takes the store at once; the idle time, the run's end and a file replaced at the path
each let it go; a run of the definitions lets it go when it ends."""

import multiprocessing
import os
import shutil
import time

import dagster as dg
import duckdb
import pytest

from reflection_assets.engines.store import hold, storage
from reflection_assets.engines.store.storage import Database

SPAWN = multiprocessing.get_context("spawn")


def opened_each(db: Database, n: int) -> list[bool]:
    """Whether each of `n` accesses opened the file (rather than joined a hold)."""
    lock = storage.store_lock(db.path)
    opened = []
    for i in range(n):
        with db.transaction() as con:
            con.execute("INSERT INTO registry.testsets (name, source) VALUES (?, 'bundled:x')", [f"t{os.getpid()}-{i}-{time.time_ns()}"])
            opened.append(lock.opened)
    return opened


@pytest.fixture
def db(tmp_path):
    db = Database(tmp_path / "store.duckdb")
    with db.connect() as con:
        con.execute("SELECT 1")
    yield db
    storage.store_lock(db.path).linger(-storage.store_lock(db.path).lingering)


def test_accesses_share_one_open_while_a_run_lingers_and_the_end_lets_the_store_go(db, monkeypatch):
    monkeypatch.setattr(hold, "LINGER_S", 30.0)
    assert opened_each(db, 3) == [True, True, True]  # outside a run: an open per access
    lock = storage.store_lock(db.path)
    with db.lingering():
        assert opened_each(db, 4) == [True, False, False, False]
        assert lock.fd is not None and lock.anchor is not None
    assert lock.fd is None and lock.anchor is None
    # nothing of this process keeps the file: a read-only open here (another mode) works
    with duckdb.connect(str(db.path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM registry.testsets").fetchone()[0] == 7


def test_the_idle_time_lets_the_store_go(db, monkeypatch):
    monkeypatch.setattr(hold, "LINGER_S", 0.05)
    lock = storage.store_lock(db.path)
    with db.lingering():
        opened_each(db, 1)
        deadline = time.monotonic() + 5
        while lock.fd is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert lock.fd is None and lock.anchor is None
        assert opened_each(db, 2) == [True, False]


def write_once(path: str, out) -> None:
    started = time.monotonic()
    try:
        with Database(path, lock_timeout_s=10).transaction() as con:
            con.execute("INSERT INTO registry.testsets (name, source) VALUES ('other', 'bundled:x')")
        out.put(("ok", storage.store_wait_s(), time.monotonic() - started))
    except Exception as exc:  # noqa: BLE001 - reported to the test
        out.put(("error", repr(exc), time.monotonic() - started))


def test_another_process_waiting_takes_the_store_from_a_lingering_run(db, monkeypatch):
    monkeypatch.setattr(hold, "LINGER_S", 60.0)  # only the waiter can make it let go
    lock = storage.store_lock(db.path)
    out = SPAWN.Queue()
    with db.lingering():
        opened_each(db, 1)
        assert lock.fd is not None
        other = SPAWN.Process(target=write_once, args=(str(db.path), out))
        other.start()
        status, waited, took = out.get(timeout=60)
        other.join(30)
        assert status == "ok", waited
        assert waited < 1.0, (waited, took)
        # the next access of the run opens the file again, and sees the other's write
        assert opened_each(db, 1) == [True]
        with db.connect(read_only=True) as con:
            assert con.execute("SELECT count(*) FROM registry.testsets WHERE name = 'other'").fetchone()[0] == 1


def test_a_file_replaced_at_the_path_is_opened_anew(db, monkeypatch):
    monkeypatch.setattr(hold, "LINGER_S", 60.0)
    with db.lingering():
        opened_each(db, 2)
        aside = db.path.with_name("aside.duckdb")
        db.path.rename(aside)  # as `reflection rebuild` moves a damaged store aside
        db.forget_schema()
        assert storage.store_lock(db.path).anchor is None
        assert opened_each(db, 1) == [True]
        with db.connect(read_only=True) as con:
            assert con.execute("SELECT count(*) FROM registry.testsets").fetchone()[0] == 1  # the new file's row


def test_a_file_replaced_unannounced_is_not_reused(db, monkeypatch):
    monkeypatch.setattr(hold, "LINGER_S", 60.0)
    moved = db.path.with_name("moved.duckdb")
    with db.lingering():
        opened_each(db, 2)
        with db.connect() as con:
            con.execute("CHECKPOINT")  # everything in the file, no WAL beside it
        db.path.rename(moved)
        shutil.copyfile(moved, db.path)  # the same bytes, another file
        assert storage.store_lock(db.path).anchor is not None
        assert opened_each(db, 1) == [True]  # its identity differs: the old open is closed first
    counts = {}
    for path in (db.path, moved):
        with duckdb.connect(str(path), read_only=True) as con:
            counts[path.name] = con.execute("SELECT count(*) FROM registry.testsets").fetchone()[0]
    assert counts == {"store.duckdb": 3, "moved.duckdb": 2}


def test_a_run_of_the_definitions_lets_the_store_go_when_it_ends(home, monkeypatch):
    from reflection_assets.assets.resources import StorageResource

    monkeypatch.setattr(hold, "LINGER_S", 60.0)
    resource = StorageResource()
    seen = {}

    @dg.asset
    def touches_the_store(storage: StorageResource) -> None:
        db = storage.db()
        seen["opened"] = opened_each(db, 3)
        seen["lingering"] = storage_lock_of(db).lingering

    def storage_lock_of(db):
        return storage.store_lock(db.path)

    assert dg.materialize([touches_the_store], resources={"storage": resource}).success
    assert seen == {"opened": [True, False, False], "lingering": 1}
    lock = storage.store_lock(resource.db().path)
    assert lock.lingering == 0 and lock.fd is None and lock.anchor is None
