"""SQL lives in sql/queries/, loaded by name (engines/store/queries.py): no statement in a
Python string elsewhere, and each module and its query file agree."""

from __future__ import annotations

import ast
import re
import sqlite3
from pathlib import Path

import duckdb
import pytest

import reflection_assets
from reflection_assets.engines.store.queries import QueryFileError, parse, queries

PACKAGE = Path(reflection_assets.__file__).parent
QUERY_DIR = PACKAGE / "sql" / "queries"
LOADER = PACKAGE / "engines" / "store" / "queries.py"

# What starts or makes up a statement, in the upper case this code writes SQL in (docstrings
# aside, which say SELECT or CHECKPOINT in prose).
SQL_WORDS = re.compile(
    r"\b(SELECT|INSERT\s+(OR\s+\w+\s+)?INTO|DELETE\s+FROM|UPDATE\s+[\w.]+\s+SET|CREATE\s+(OR\s+REPLACE\s+)?"
    r"(TEMP\s+)?(TABLE|VIEW|SCHEMA|INDEX|SEQUENCE|MACRO)|DROP\s+(TABLE|VIEW|SCHEMA)|ALTER\s+TABLE|WHERE|JOIN|"
    r"CHECKPOINT|BEGIN\s+TRANSACTION|COMMIT|ROLLBACK|ATTACH|DETACH|PRAGMA|COPY|ORDER\s+BY|GROUP\s+BY|VALUES)\b"
)


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _sql_strings(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    docs = _docstrings(tree)
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
        and SQL_WORDS.search(node.value)
    ]


def test_no_sql_in_python_strings():
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {text.strip()[:60]!r}"
        for path in _modules()
        if path != LOADER
        for line, text in _sql_strings(path)
    ]
    assert not found, "SQL belongs in sql/queries/ (engines/store/queries.py):\n" + "\n".join(found)


def test_the_scan_finds_sql_where_it_is(tmp_path):
    """The scan above can fail: it finds statements, fragments and f-string parts."""
    source = (
        'X = "SELECT a FROM t"\n'
        'def f(t):\n    """SELECT in a docstring is prose."""\n    return f"DELETE FROM {t} WHERE x = ?"\n'
        'Y = " ORDER BY record_id"\n'
        'Z = "no sql here, we select a few"\n'
    )
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert sorted({line for line, _ in _sql_strings(path)}) == [1, 4, 5]


def _bound(path: Path) -> tuple[str, set[str]] | None:
    """The query file a module binds as SQL, and the statement names it runs."""
    tree = ast.parse(path.read_text())
    file = None
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and [getattr(t, "id", None) for t in node.targets] == ["SQL"]
            and isinstance(node.value, ast.Call)
            and getattr(node.value.func, "id", None) == "queries"
        ):
            file = node.value.args[0].value
    if file is None:
        return None
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and getattr(node.value, "id", None) == "SQL":
            if node.attr != "format":
                names.add(node.attr)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and getattr(node.func.value, "id", None) == "SQL"
            and node.func.attr == "format"
        ):
            assert isinstance(node.args[0], ast.Constant), f"{path}:{node.lineno}: SQL.format takes a written name"
            names.add(node.args[0].value)
    return file, names


def test_modules_and_query_files_agree():
    bound = {}
    for path in _modules():
        found = _bound(path)
        if found:
            file, names = found
            assert file not in bound, f"{file}.sql is bound by {bound[file][0]} and {path}: one file per module"
            bound[file] = (path, names)
    files = {p.stem for p in QUERY_DIR.glob("*.sql")}
    assert files == set(bound), f"query files no module binds: {files - set(bound)}; bound, missing: {set(bound) - files}"
    for file, (path, names) in bound.items():
        statements = set(queries(file).statements)
        assert names <= statements, f"{path} runs {sorted(names - statements)}, not in sql/queries/{file}.sql"
        assert statements <= names, f"sql/queries/{file}.sql has {sorted(statements - names)}, which {path} never runs"


# What a `{part}` stands for where a name would not parse.
FILLERS = {"assignments": "status = ?"}


def test_every_query_parses_in_duckdb():
    """Each statement is one statement DuckDB can parse (its `{part}`s filled by a name)."""
    con = duckdb.connect()
    for file in sorted(f for f in QUERY_DIR.glob("*.sql") if not f.name.startswith("sqlite_")):
        found = queries(file.stem)
        for name, statement in found.statements.items():
            filled = re.sub(r"(?<!\{)\{(\w+)\}(?!\})", lambda m: FILLERS.get(m.group(1), "main.t"), statement)
            try:
                con.extract_statements(filled)
            except duckdb.ParserException as exc:
                pytest.fail(f"{found.file}: {name}: {exc}")
            assert len(con.extract_statements(filled)) == 1, f"{found.file}: {name}"


def test_every_sqlite_query_runs_in_sqlite(tmp_path):
    """The sqlite_* files (Dagster's SQLite event log) hold one statement each that SQLite
    runs, on a WAL-mode file as Dagster's are."""
    con = sqlite3.connect(tmp_path / "probe.db")
    con.execute("PRAGMA journal_mode=WAL")
    files = sorted(QUERY_DIR.glob("sqlite_*.sql"))
    assert files
    for file in files:
        for name, statement in queries(file.stem).statements.items():
            assert sqlite3.complete_statement(statement + ";"), f"{file.name}: {name}"
            con.execute(statement).fetchall()


def test_parse_says_where_a_file_is_wrong():
    good = parse("q.sql", "-- what the file is for\n\n-- name: one\n-- the first\nSELECT 1;\n\n-- name: two\nSELECT\n  2\n")
    assert good.one == "SELECT 1" and good.two == "SELECT\n  2" and good.docs["one"] == "the first"
    with pytest.raises(AttributeError, match=r"q.sql: no statement named 'three' \(has one, two\)"):
        good.three
    with pytest.raises(QueryFileError, match=r"q.sql:1: SQL before the first `-- name:` line"):
        parse("q.sql", "SELECT 1;\n-- name: one\nSELECT 2;")
    with pytest.raises(QueryFileError, match=r"q.sql:3: a second statement named 'one'"):
        parse("q.sql", "-- name: one\nSELECT 1;\n-- name: one\nSELECT 2;")
    with pytest.raises(QueryFileError, match=r"q.sql:2: statement 'one' is empty"):
        parse("q.sql", "-- name: one\n-- nothing\n-- name: two\nSELECT 2")
    with pytest.raises(QueryFileError, match=r"q.sql:2: statement 'one' holds more than one statement"):
        parse("q.sql", "-- name: one\nSELECT 1; SELECT 2;")
    with pytest.raises(QueryFileError, match=r"q.sql:1: 'One': expected a lower-case name"):
        parse("q.sql", "-- name: One\nSELECT 1")
    with pytest.raises(QueryFileError, match=r"q.sql: no `-- name:` statement"):
        parse("q.sql", "-- only a comment\n")


def test_format_fills_names_never_values():
    found = parse("q.sql", "-- name: clear\nDELETE FROM {table} WHERE dataset = ?;")
    assert found.format("clear", table="reflect.responses") == "DELETE FROM reflect.responses WHERE dataset = ?"
    with pytest.raises(QueryFileError, match=r"q.sql: clear: no value given for \{table\}"):
        found.format("clear")
    for value in ("t; DROP TABLE x", "t WHERE name = 'a'", "t -- rest", "t /* c */"):
        with pytest.raises(QueryFileError, match="is not a list of SQL names"):
            found.format("clear", table=value)
    with pytest.raises(QueryFileError, match=r"sql/queries/nothing_here.sql: missing"):
        queries("nothing_here")
