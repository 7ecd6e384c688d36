"""Keeps DuckDB from importing pandas for a query's parameters in the store's connections.

DuckDB 1.5 imports pandas (and numpy) on a process's first query with a parameter: its
parameter conversion compares each value with pandas' NaT and NA. This package never hands
DuckDB a pandas object, and the import costs a command 0.4 to 0.7 s of a 2-core machine,
more than most commands' own work (`reflection status`, `datasets add`, every run worker).

While a thread is inside one of the store's connections (`duckdb_scope`), an import of
pandas that does not come from a Python `import` (DuckDB's C++ asks through the C API)
fails at once: DuckDB then takes pandas as absent for that value and asks again next time,
caching nothing, so a later import of pandas by anyone makes it whole again. An import a
Python module makes, inside a connection or not (`datasets` reading a source), goes on as
usual. benchmarks/command_imports.py measures what it saves."""

from __future__ import annotations

import dis
import importlib.abc
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_IMPORT_NAME = dis.opmap["IMPORT_NAME"]
_scope = threading.local()


def _from_python_import(frame) -> bool:
    """Whether the first frame outside the import machinery asked for the import itself: an
    `import` statement, or importlib (import_module, which lazy importers use, or
    util.find_spec, with which libraries look for an optional package)."""
    while frame is not None and frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
        frame = frame.f_back
    if frame is None:
        return True
    where = frame.f_code.co_filename  # importlib.util is frozen too ("<frozen importlib.util>")
    if where.startswith("<frozen importlib") or os.path.basename(os.path.dirname(where)) == "importlib":
        return True
    code = frame.f_code.co_code
    return 0 <= frame.f_lasti < len(code) and code[frame.f_lasti] == _IMPORT_NAME


class _NoPandasForDuckDB(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "pandas" or not getattr(_scope, "depth", 0) or _from_python_import(sys._getframe(1)):
            return None
        raise ModuleNotFoundError("pandas is not imported for DuckDB's parameter checks here", name=name)


_FINDER = _NoPandasForDuckDB()


def install() -> None:
    if not any(isinstance(f, _NoPandasForDuckDB) for f in sys.meta_path):
        sys.meta_path.insert(0, _FINDER)


@contextmanager
def duckdb_scope() -> Iterator[None]:
    """The block in which this thread uses the store's connections (they nest)."""
    _scope.depth = getattr(_scope, "depth", 0) + 1
    try:
        yield
    finally:
        _scope.depth -= 1
