"""The dataset registry: names users give to sources, stored in registry.datasets."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from reflection_assets.engines.store.ledger import logged
from reflection_assets.engines.data.sources import (
    BUNDLED_PREFIX,
    FORMATS,
    SourceError,
    detect_format,
    resolve_source,
)
from reflection_assets.engines.store.queries import queries
from reflection_assets.engines.store.storage import Database
from reflection_assets.errors import UserError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
FIELD_ROLES = ("instruction", "input", "output")
SQL = queries("data_datasets")


class DatasetError(UserError):
    """A registry request that cannot be honoured. The message is meant for the user."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    source: str
    format: str | None = None
    field_map: dict[str, str] = field(default_factory=dict)
    limit: int | None = None
    """Only the source's first `limit` rows are read (a first look at a large dataset)."""


def parse_field_map(pairs: list[str]) -> dict[str, str]:
    """['instruction=Question', 'output=Answer'] -> {'instruction': 'Question', ...}"""
    mapping: dict[str, str] = {}
    for pair in pairs:
        role, sep, column = pair.partition("=")
        if not sep or role not in FIELD_ROLES or not column:
            raise DatasetError(
                f"--field {pair!r}: expected ROLE=COLUMN with ROLE one of {', '.join(FIELD_ROLES)}"
            )
        mapping[role] = column
    return mapping


class DatasetRegistry:
    def __init__(self, db: Database):
        self.db = db

    def add(
        self,
        name: str,
        source: str,
        fmt: str | None = None,
        field_map: dict[str, str] | None = None,
        replace: bool = False,
        limit: int | None = None,
    ) -> DatasetSpec:
        if not NAME_PATTERN.match(name):
            raise DatasetError(
                f"dataset name {name!r}: use letters, digits, '_', '.' or '-' (at most 64, "
                "starting with a letter or digit)"
            )
        if fmt is not None and fmt not in FORMATS:
            raise DatasetError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
        if limit is not None and limit < 1:
            raise DatasetError(f"--limit {limit}: expected a number of rows from 1 up")
        if not source.startswith(BUNDLED_PREFIX):
            source = str(resolve_source(source).resolve())
        try:
            path = resolve_source(source)
            if not path.exists():
                raise SourceError(f"{path}: no such file or folder")
            if fmt is None:
                detect_format(path)  # fail now, not at the first materialization
        except SourceError as exc:
            raise DatasetError(str(exc)) from None
        spec = DatasetSpec(name, source, fmt, dict(field_map or {}), limit)
        existing = self.find(name)
        if existing is not None and existing != spec and not replace:
            raise DatasetError(
                f"dataset {name!r} is already registered with source {existing.source}"
                + (f" (its first {existing.limit} rows)" if existing.limit else "")
                + "; pass --replace to point it at the new source or settings"
            )
        with self.db.transaction() as con:  # the ledger has the row before it commits
            logged(
                con, self.db.ledger(), "registry.datasets", SQL.upsert_dataset,
                [name, source, fmt, json.dumps(spec.field_map, sort_keys=True), limit],
            )
        return spec

    def find(self, name: str) -> DatasetSpec | None:
        with self.db.connect() as con:
            row = con.execute(SQL.find_dataset, [name]).fetchone()
        return None if row is None else _spec(row)

    def get(self, name: str) -> DatasetSpec:
        spec = self.find(name)
        if spec is None:
            known = ", ".join(s.name for s in self.list()) or "none yet"
            raise DatasetError(
                f"dataset {name!r} is not registered (registered: {known}); "
                "add it with `reflection datasets add NAME SOURCE`"
            )
        return spec

    def list(self) -> list[DatasetSpec]:
        with self.db.connect() as con:
            rows = con.execute(SQL.list_datasets).fetchall()
        return [_spec(r) for r in rows]


def _spec(row: tuple) -> DatasetSpec:
    return DatasetSpec(row[0], row[1], row[2], json.loads(row[3]), row[4])
