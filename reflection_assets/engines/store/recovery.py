"""`reflection doctor` and `reflection rebuild`: check the store, and make a new one from
its ledger (engines/store/ledger.py) when the file is damaged or gone.

The doctor reads every row of every table (DuckDB verifies each block's checksum as it
reads it), and the ledger's every segment. A rebuild moves the damaged file aside (never
deletes it), makes a new store and puts back what the ledger holds: the registries, every
reply, every batch record. The rest of the store is derived from those and the datasets'
sources, computed locally: re-materializing the stages sends no request, because every
reply they need is in the cache again."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import polars as pl

from reflection_assets.engines.store.ledger import TABLES, LedgerState, is_live, ledger_folder, read_ledger, segment_paths
from reflection_assets.engines.store.queries import queries
from reflection_assets.engines.store.storage import Database, DamagedStore, StorageError, store_lock

SQL = queries("store_recovery")

# What a rebuild leaves to be computed again, and how: none of it is paid.
RECOMPUTED = (
    "raw_dataset rows (read again from each dataset's source)",
    "reflected_instructions, reflected_responses and recycled_dataset (from the restored replies: no request is sent)",
    "student scores and selective_dataset (the student, locally)",
    "benchmark answers and judgments (the adapters answer locally or from your server; the judge's replies are restored)",
)


@dataclass
class Checkup:
    healthy: bool
    lines: list[str] = field(default_factory=list)


def _describe(state: LedgerState) -> str:
    counts = {table: len(rows) for table, rows in state.tables.items()}
    return (
        f"{state.segments} segments ({state.bytes / 1024:,.0f} KiB), {state.events} events: "
        f"{counts['oracle.replies']} replies, {counts['oracle.batches']} batches "
        f"({counts['oracle.batch_requests']} requests), {counts['registry.datasets']} datasets, "
        f"{counts['registry.testsets']} test sets, {counts['training.adapters']} adapters"
    )


def _read_every_table(con: duckdb.DuckDBPyConnection) -> tuple[int, int]:
    tables = con.execute(SQL.tables).fetchall()
    rows = 0
    for schema, table in tables:
        # hash(t) reads every column of every row: each block's checksum is verified.
        count, _ = con.execute(SQL.format("read_table", table=f'"{schema}"."{table}"')).fetchone()
        rows += count
    return len(tables), rows


def doctor(db: Database, backfill: bool = False) -> Checkup:
    folder = ledger_folder(db.path)
    state = read_ledger(folder)
    ledger_line = f"ledger {folder}: " + (_describe(state) if state.segments else "empty")
    # An unfinished last line is what a kill mid-write leaves; every complete line is read.
    notes = [f"  {torn}" for torn in state.torn]
    if not db.path.exists():
        return Checkup(False, [
            f"store {db.path}: missing",
            ledger_line, *notes,
            "way back: `reflection rebuild` makes a new store from the ledger"
            + ("" if state.segments else " (it is empty: the new store starts empty)"),
        ])
    try:
        with db.connect(read_only=True) as con:
            tables, rows = _read_every_table(con)
            stored = {
                table: {tuple(row) for row in con.execute(SQL.format("table_keys", keys=", ".join(keys), table=table)).fetchall()}
                for table, keys in TABLES.items()
            }
    except (StorageError, duckdb.Error) as exc:
        if isinstance(exc, DamagedStore):
            problem = exc.problem
        else:
            problem = f"damaged ({exc})" if isinstance(exc, duckdb.Error) else f"cannot be read: {exc}"
        return Checkup(False, [
            f"store {db.path}: {problem}",
            ledger_line, *notes,
            "way back: `reflection rebuild` moves the file aside (it is kept) and makes a new store from the ledger",
        ])
    lines = [f"store {db.path}: healthy: {tables} tables, {rows} rows read, every block's checksum verified",
             ledger_line, *notes]
    if state.live:
        lines.append(f"  being written by running processes: {', '.join(state.live)}")
    unlogged = {table: keys - set(state.tables[table]) for table, keys in stored.items()}
    missing = sum(len(keys) for keys in unlogged.values())
    if missing and backfill:
        _backfill(db, unlogged)
        lines.append(f"copied into the ledger: {missing} rows the store held and the ledger did not")
    elif missing:
        what = ", ".join(f"{len(keys)} of {table}" for table, keys in unlogged.items() if keys)
        lines.append(
            f"not in the ledger: {what} (stored before the ledger existed, or by a process that "
            "is still running): `reflection doctor --backfill` copies them there"
        )
    return Checkup(True, lines)


def _backfill(db: Database, unlogged: dict[str, set[tuple]]) -> None:
    ledger = db.ledger()
    with db.connect(read_only=True) as con:
        for table, keys in unlogged.items():
            if not keys:
                continue
            cursor = con.execute(SQL.format("table_rows", table=table))
            names = [d[0] for d in cursor.description]
            columns = TABLES[table]
            rows = [dict(zip(names, row)) for row in cursor.fetchall()]
            ledger.put(table, [r for r in rows if tuple(r[c] for c in columns) in keys], sync=False)
    ledger.sync()


@dataclass
class Rebuilt:
    moved_aside: list[Path]
    restored: dict[str, int]
    datasets: list[str]
    torn: list[str]


def _text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def _restore(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict]) -> int:
    if not rows:
        return 0
    schema, name = table.split(".")
    types = dict(con.execute(SQL.column_types, [schema, name]).fetchall())
    present = Counter(column for row in rows for column in row)
    columns = [c for c in types if present[c]]  # the others take their defaults
    frame = pl.DataFrame(  # noqa: F841 (read by DuckDB by its name below)
        {c: [_text(row.get(c)) for row in rows] for c in columns}, schema={c: pl.Utf8 for c in columns}
    )
    casts = ", ".join(f'CAST("{c}" AS {types[c]})' for c in columns)
    con.execute(SQL.format("restore_rows", table=table, columns=", ".join(columns), casts=casts))
    return len(rows)


def rebuild(db: Database) -> Rebuilt:
    folder = ledger_folder(db.path)
    mine = db.ledger().current_segment()  # this process writes nothing meanwhile
    live = [p.name for p in segment_paths(folder) if p != mine and is_live(p)]
    if live:
        raise StorageError(
            f"{folder}: processes are writing to the ledger ({', '.join(live)}; the pid is the third part "
            "of each name): stop them, then rebuild"
        )
    state = read_ledger(folder)
    lock = store_lock(db.path)
    lock.acquire(db.lock_timeout_s, db.path)  # no other process reads or writes meanwhile
    try:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        moved = []
        for path in (db.path, db.path.with_name(db.path.name + ".wal")):
            if path.exists():
                aside = path.with_name(f"{path.name}.damaged-{stamp}")
                path.rename(aside)
                moved.append(aside)
        db.forget_schema()
        db.restoring = True
        try:
            with db.transaction() as con:
                restored = {table: _restore(con, table, state.rows(table)) for table in TABLES}
            with db.connect() as con:
                con.execute(SQL.checkpoint)
        finally:
            db.restoring = False
    finally:
        lock.release()
    datasets = sorted(row["name"] for row in state.rows("registry.datasets"))
    return Rebuilt(moved, restored, datasets, state.torn)
