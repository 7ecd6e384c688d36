"""The store's lock (engines/store/storage.py), between real processes: a read or write waits for
another process's and then goes on; a wait that runs out names the holder; a writer in a
loop lets a reader in; the threads of one process share its hold; a store written here
opens read-only in another process (no DDL left in the write-ahead log)."""

import multiprocessing
import threading
import time

import duckdb
import pytest

from reflection_assets.engines.store import storage
from reflection_assets.engines.store.storage import Database, StorageError

# They time processes side by side: nothing else may share the machine (make test runs them alone).
pytestmark = pytest.mark.serial

SPAWN = multiprocessing.get_context("spawn")


def hold(path: str, seconds: float, ready) -> None:
    with Database(path).connect() as con:
        con.execute("SELECT 1")
        ready.set()
        time.sleep(seconds)


def write_in_a_loop(path: str, stop, ready) -> None:
    """Writes without a pause until `stop` is set (at most a minute), each write holding the
    store 100 ms, as a large one does."""
    db = Database(path)
    end, n = time.monotonic() + 60, 0
    ready.set()
    while not stop.is_set() and time.monotonic() < end:
        with db.transaction() as con:
            con.execute("INSERT INTO registry.testsets (name, source) VALUES (?, 'bundled:x')", [f"t{n}"])
            time.sleep(0.1)
        n += 1


def read_only(path: str, out) -> None:
    with duckdb.connect(path, read_only=True) as con:
        out.put(con.execute("SELECT count(*) FROM registry.testsets").fetchone()[0])


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "store.duckdb"
    with Database(path).connect() as con:
        con.execute("SELECT 1")
    return path


def start(target, *args):
    ready = SPAWN.Event()
    process = SPAWN.Process(target=target, args=(*args, ready))
    process.start()
    assert ready.wait(60)
    return process


def test_a_write_waits_for_another_process_and_goes_on(store):
    holder = start(hold, str(store), 1.5)
    waited = storage.store_wait_s()
    asked = time.monotonic()
    with Database(store).transaction() as con:
        con.execute("INSERT INTO registry.testsets (name, source) VALUES ('after', 'bundled:x')")
    took = time.monotonic() - asked
    holder.join(30)
    assert 0.8 < took < 10, took
    assert storage.store_wait_s() - waited > 0.8


def test_a_wait_that_runs_out_names_the_holder(store):
    holder = start(hold, str(store), 5)
    try:
        with pytest.raises(StorageError, match=rf"held by process {holder.pid} for over 1 s.*stuck: stop it"):
            with Database(store, lock_timeout_s=0.6).connect():
                pass
        assert holder.is_alive()  # it held the store the whole wait
    finally:
        holder.terminate()  # not the rest of its 5 s: nothing is left to see
        holder.join(30)


def test_a_writer_in_a_loop_lets_a_reader_in(store):
    stop = SPAWN.Event()
    writer = start(write_in_a_loop, str(store), stop)
    try:
        waits = []
        for _ in range(8):
            asked = time.monotonic()
            with Database(store).connect(read_only=True) as con:
                con.execute("SELECT count(*) FROM registry.testsets").fetchone()
            waits.append(time.monotonic() - asked)
            time.sleep(0.2)
        assert writer.is_alive()  # the reads happened while it wrote
    finally:
        stop.set()
        writer.join(30)
    assert max(waits) < 2.0, waits
    with Database(store).connect(read_only=True) as con:
        assert con.execute("SELECT count(*) FROM registry.testsets").fetchone()[0] > 8  # it did write meanwhile


def test_the_threads_of_one_process_share_its_hold(store):
    db = Database(store)
    inner_done = threading.Event()

    def inner():
        with db.connect() as con:
            con.execute("SELECT 1")
        inner_done.set()

    with db.connect() as con:
        con.execute("SELECT 1")
        thread = threading.Thread(target=inner)
        thread.start()
        assert inner_done.wait(10), "a second thread of the holding process waited for its own process"
    thread.join()


def test_threads_opening_and_closing_at_once_never_see_a_damaged_store(store):
    """One thread's open while another closes the hold's last connection found DuckDB's
    instance half torn down: "Unique file handle conflict", reported as a damaged store (the
    oracle client's writer thread beside a step's reads, in CI). Before the fix, three
    threads of 300 opens each hit it in every try here."""
    errors: list[BaseException] = []

    def open_and_close():
        db = Database(store)
        try:
            for _ in range(300):
                with db.connect() as con:
                    con.execute("SELECT count(*) FROM registry.testsets").fetchone()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_and_close) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]


def test_a_store_written_here_opens_read_only_in_another_process(store):
    with Database(store).transaction() as con:
        con.execute("INSERT INTO registry.testsets (name, source) VALUES ('one', 'bundled:x')")
    out = SPAWN.Queue()
    reader = SPAWN.Process(target=read_only, args=(str(store), out))
    reader.start()
    assert out.get(timeout=60) == 1
    reader.join(30)
    assert reader.exitcode == 0


def test_reads_and_writes_inside_a_hold_share_its_open_and_a_write_waits_for_reads(store):
    db = Database(store)
    with db.held():
        with db.transaction() as con:
            con.execute("INSERT INTO registry.testsets (name, source) VALUES ('one', 'bundled:x')")
        with db.connect(read_only=True) as con:  # DuckDB opens a file in one mode per process
            assert con.execute("SELECT count(*) FROM registry.testsets").fetchone()[0] == 1
    wrote = threading.Event()

    def write():
        with db.transaction() as con:
            con.execute("INSERT INTO registry.testsets (name, source) VALUES ('two', 'bundled:x')")
        wrote.set()

    with db.connect(read_only=True) as con:
        writer = threading.Thread(target=write)
        writer.start()
        assert not wrote.wait(0.5), "a write opened while this thread's read-only connection was open"
        assert con.execute("SELECT count(*) FROM registry.testsets").fetchone()[0] == 1
    assert wrote.wait(10), "the write did not go on once the read closed"
    writer.join()
    with pytest.raises(RuntimeError, match="a write inside this thread's read-only connection"):
        with db.connect(read_only=True), db.transaction():
            pass


WRITES = 400


def test_many_small_writes_do_not_leave_a_long_wal_for_every_open_to_replay(store, tmp_path):
    """Each open replays the WAL at about half a millisecond per commit: the store checkpoints
    at a write's close once that replay reaches a quarter of a checkpoint's cost, so 400
    one-row writes leave a WAL far shorter than the 400 commits DuckDB alone would keep.
    Before a checkpoint has been timed, the rule assumes one costs 0.2 s: the first comes
    after 120 to 180 commits here, and a slow one (fresh clone, 2026-12-04: the WAL still
    held 151 of 300 commits) puts the next as far again, so 300 writes could end just past
    half of DuckDB's WAL; 400 cannot."""
    plain = tmp_path / "plain.duckdb"
    with Database(plain).connect():
        pass
    con = duckdb.connect(str(plain))
    con.execute("PRAGMA disable_checkpoint_on_shutdown")
    for n in range(WRITES):
        con.execute("INSERT INTO registry.testsets (name, source) VALUES (?, 'bundled:x')", [f"t{n}"])
    con.close()
    kept = (tmp_path / "plain.duckdb.wal").stat().st_size

    db = Database(store)
    for n in range(WRITES):
        with db.transaction() as con:
            con.execute("INSERT INTO registry.testsets (name, source) VALUES (?, 'bundled:x')", [f"t{n}"])
    wal = store.with_name(store.name + ".wal")
    assert (wal.stat().st_size if wal.exists() else 0) < kept / 2, (wal.stat().st_size, kept)
    assert storage.store_lock(store).checkpoint_s is not None
    with db.connect(read_only=True) as con:
        assert con.execute("SELECT count(*) FROM registry.testsets").fetchone()[0] == WRITES


def test_a_store_named_after_one_of_its_schemas_is_refused_with_the_reason(tmp_path):
    """DuckDB names a database after its file: bench.duckdb made every `bench.` name
    ambiguous, and the first write failed with DuckDB's "Ambiguous reference" while setting
    up the schema."""
    for name in ("bench.duckdb", "Oracle.duckdb", "raw.db"):
        with pytest.raises(StorageError, match=rf"{name}: a store cannot be named {name}: DuckDB names a database"):
            Database(tmp_path / name)
    with Database(tmp_path / "benchmarks.duckdb").connect() as con:  # only the exact names
        assert con.execute("SELECT count(*) FROM bench.runs").fetchone() == (0,)
