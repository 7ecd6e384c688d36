"""The SQL statements the engines run, kept as SQL in sql/queries/ and loaded by name.

One file per module that runs them (`sql/queries/reflection_store.sql` for
engines/reflection/store.py), each statement under a `-- name: NAME` line, the convention of
aiosql and yesql; comment lines right after it say what the statement is for:

    -- name: raw_pairs
    -- A shard's raw pairs, in record order.
    SELECT record_id, instruction, input, output FROM raw.records
    WHERE dataset = ? AND shard = ? ORDER BY record_id;

A module binds its file once, `SQL = queries("reflection_store")`, and runs `SQL.raw_pairs`
with DuckDB's `?` parameters. Where a statement names a table or columns chosen in code (the
same delete for two tables, a view picked by mode), the file writes `{table}` and the module
fills it with `SQL.format("name", table=...)`: only names, never values, which stay `?`
parameters. The files' DDL siblings, sql/*.sql, set up the schema (engines/store/storage.py);
this folder has no DDL, and changing a query does not set the schema up again.

tests/unit/test_queries.py holds this: no SQL statement in a Python string outside this
loader, every `SQL.name` a module runs exists in its file, and every statement in a file is
run by its module."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from reflection_assets.errors import UserError

SQL_PACKAGE = "reflection_assets"
QUERIES_FOLDER = "sql/queries"

_NAME_LINE = re.compile(r"^--\s*name:\s*(\S+)\s*$")
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
# What may fill a `{part}`: SQL names (qualified, quoted) and lists or expressions of them,
# never a literal, a second statement or a comment.
_PART = re.compile(r"""^[^;'\\]*$""")


class QueryFileError(UserError):
    """A query file is missing, malformed, or lacks a statement asked of it: the package was
    installed without sql/queries/, or a module and its file disagree."""


@dataclass(frozen=True)
class Queries:
    """The statements of one file, by name."""

    file: str
    statements: dict[str, str]
    docs: dict[str, str]

    def __getattr__(self, name: str) -> str:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self.statements[name]
        except KeyError:
            raise AttributeError(f"{self.file}: no statement named {name!r} (has {', '.join(self.statements)})") from None

    def format(self, name: str, **parts: str) -> str:
        """Statement `name` with its `{part}`s filled by the names given; every part the
        statement has must be given, and each must be names, not values."""
        for key, value in parts.items():
            if not _PART.match(value) or "--" in value or "/*" in value:
                raise QueryFileError(f"{self.file}: {name}: {{{key}}} = {value!r} is not a list of SQL names")
        try:
            return getattr(self, name).format(**parts)
        except KeyError as exc:
            raise QueryFileError(f"{self.file}: {name}: no value given for {{{exc.args[0]}}}") from None


def parse(file: str, text: str) -> Queries:
    """The statements of a query file's text; `file` names it in errors."""
    statements: dict[str, str] = {}
    docs: dict[str, str] = {}
    name = None
    body: list[str] = []
    doc: list[str] = []

    def close(line_no: int) -> None:
        if name is None:
            return
        statement = "\n".join(body).strip().rstrip(";").strip()
        if not statement:
            raise QueryFileError(f"{file}:{line_no}: statement {name!r} is empty")
        if ";" in statement.replace("';'", ""):
            raise QueryFileError(f"{file}:{line_no}: statement {name!r} holds more than one statement")
        statements[name] = statement
        docs[name] = " ".join(doc)

    for line_no, line in enumerate(text.splitlines(), 1):
        found = _NAME_LINE.match(line.strip())
        if found:
            close(line_no - 1)
            name, body, doc = found.group(1), [], []
            if not _NAME.match(name):
                raise QueryFileError(f"{file}:{line_no}: {name!r}: expected a lower-case name (letters, digits, _)")
            if name in statements:
                raise QueryFileError(f"{file}:{line_no}: a second statement named {name!r}")
        elif name is None:
            if line.strip() and not line.strip().startswith("--"):
                raise QueryFileError(f"{file}:{line_no}: SQL before the first `-- name:` line")
        elif line.strip().startswith("--") and not body:
            doc.append(line.strip()[2:].strip())
        else:
            body.append(line)
    close(len(text.splitlines()))
    if not statements:
        raise QueryFileError(f"{file}: no `-- name:` statement")
    return Queries(file, statements, docs)


@lru_cache(maxsize=None)
def queries(name: str) -> Queries:
    """The statements of sql/queries/NAME.sql, from the installed package (read once)."""
    path = resources.files(SQL_PACKAGE) / QUERIES_FOLDER / f"{name}.sql"
    if not path.is_file():
        raise QueryFileError(f"{path}: missing; the package was installed without its sql/queries/ folder")
    return parse(f"sql/queries/{name}.sql", path.read_text())
