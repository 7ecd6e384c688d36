"""DuckDB imports pandas for a query's parameters; the store's connections keep it from doing
so (engines/store/no_pandas.py), and nothing else about pandas changes. Each check runs in a
fresh interpreter: the test process has pandas imported already."""

import subprocess
import sys
import textwrap

from tests.conftest import REPO


def python(code: str, tmp_path) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=REPO, timeout=120, env={"PATH": "/usr/bin:/bin", "STORE": str(tmp_path / "s.duckdb")})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def test_duckdb_does_not_import_pandas_inside_the_stores_connections(tmp_path):
    out = python("""
        import os, sys
        from reflection_assets.engines.store.storage import Database
        db = Database(os.environ["STORE"])
        with db.transaction() as con:
            con.execute("INSERT INTO registry.testsets (name, source) VALUES (?, ?)", ["t", "bundled:x"])
        with db.connect(read_only=True) as con:
            print(con.execute("SELECT source FROM registry.testsets WHERE name = ?", ["t"]).fetchone()[0])
        print("pandas" in sys.modules, "numpy" in sys.modules)
    """, tmp_path)
    assert out.splitlines() == ["bundled:x", "False False"]


def test_python_imports_of_pandas_go_on_and_duckdb_then_uses_it(tmp_path):
    """An `import pandas` inside a connection (a source read by `datasets`) works; DuckDB
    cached nothing against pandas, so a NaT parameter is a NULL once pandas is there."""
    out = python("""
        import importlib, importlib.util, os, sys
        from reflection_assets.engines.store.storage import Database
        db = Database(os.environ["STORE"])
        with db.connect() as con:
            con.execute("SELECT ?", [1]).fetchall()
            import pandas
            print(con.execute("SELECT ? IS NULL", [pandas.NaT]).fetchone()[0])
        del sys.modules["pandas"]
        with db.connect() as con:
            print(importlib.util.find_spec("pandas").name)  # how libraries look for it
            print(importlib.import_module("pandas").__name__)
    """, tmp_path)
    assert out.splitlines() == ["True", "pandas", "pandas"]


def test_without_the_guard_duckdb_imports_pandas(tmp_path):
    """What the guard is for: if a DuckDB release stops importing pandas for parameters,
    this fails and engines/store/no_pandas.py can go."""
    out = python("""
        import os, sys
        from reflection_assets.engines.store import no_pandas
        from reflection_assets.engines.store.storage import Database
        sys.meta_path.remove(no_pandas._FINDER)
        with Database(os.environ["STORE"]).connect() as con:
            con.execute("SELECT ?", [1]).fetchall()
        print("pandas" in sys.modules)
    """, tmp_path)
    assert out == "True"
