"""The reply journal: every paid reply appended to a file the moment it arrives, before it
waits for the next DuckDB flush.

Measured without it (benchmarks/crash_rebuy.py): a SIGKILL at full speed lost the replies
of the last flush interval, about a second's worth (~150 at 200 ms latency and 32 in
flight), and the next run bought them again. A line written to a file survives the death of
the process that wrote it (the kernel holds it, SIGKILL or not; a power cut is another
matter), so the next client replays an orphaned journal into oracle.replies before it looks
anything up. A live journal is told apart from an orphan by the lock its writer holds on
it: the kernel releases that lock when the writer dies, however it dies."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import uuid
from collections.abc import Sequence
from pathlib import Path


def journal_folder(database: Path) -> Path:
    """Beside the database file: the journal belongs to it."""
    return database.with_name(database.name + ".journal")


class ReplyJournal:
    """One writer's journal: one JSON array per line, in the reply table's column order."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self.path = folder / name
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (held for the session)
        fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def append(self, row: Sequence[object]) -> None:
        # Into the kernel now (flush), not at the next buffer boundary: that is what a
        # SIGKILL cannot take away.
        self._file.write(json.dumps(list(row), ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        """After every reply it holds is in the database: the journal is no longer needed."""
        self._file.close()
        self.path.unlink(missing_ok=True)


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
