"""The reply journals of the versions before the ledger (engines/store/ledger.py), which took
over their role: one JSON array per reply, in oracle.replies' column order, in
`<database>.journal/`. A journal left by a killed process of such a version is still
replayed (into the database and the ledger) by the next oracle client, then removed. A
journal whose writer is alive holds a lock on it, released by the kernel however it dies."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path


def journal_folder(database: Path) -> Path:
    return database.with_name(database.name + ".journal")


def orphaned_rows(folder: Path) -> list[tuple[Path, object, list[list[object]]]]:
    """(path, open locked file, rows) for each journal whose writer is gone. The caller
    stores the rows and then calls `discard`; the lock keeps a second replayer out."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.jsonl")):
        try:
            handle = open(path, encoding="utf-8")  # noqa: SIM115 (closed by discard)
        except FileNotFoundError:
            continue  # replayed by someone else meanwhile
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()  # its writer is alive
            continue
        rows = []
        for line in handle.read().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # the last line, cut by the kill
        found.append((path, handle, rows))
    return found


def discard(path: Path, handle) -> None:
    path.unlink(missing_ok=True)
    handle.close()
