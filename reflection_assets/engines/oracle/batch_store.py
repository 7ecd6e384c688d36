"""The record of batches in DuckDB (oracle.batches, oracle.batch_requests): every batch
with the request keys it holds, written before anything waits on it, so a killed run finds
what it left in flight, and `reflection batch import` knows which custom ids are ours. Each
write also goes to the store's ledger, as the rows now stand: a batch paid for at the
provider is found again after `reflection rebuild`."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime

import polars as pl

from reflection_assets.engines.store.ledger import logged
from reflection_assets.engines.store.queries import queries
from reflection_assets.engines.store.storage import Database
from reflection_assets.method.requests import OracleRequest

SQL = queries("oracle_batch_store")

LIVE = ("preparing", "validating", "in_progress", "finalizing", "cancelling")
TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass(frozen=True)
class BatchRecord:
    batch_key: str
    kind: str
    role: str
    base_url: str | None
    model: str
    dataset: str | None
    stage: str | None
    shard: int | None
    requests: int
    attempt: int
    retry_of: str | None
    whole_retry: bool
    input_file_id: str | None
    provider_batch_id: str | None
    status: str
    completed: int
    failed: int
    output_file_id: str | None
    error_file_id: str | None
    message: str | None
    cancel_requested: bool
    collected: bool
    created_at: datetime
    updated_at: datetime


COLUMNS = ", ".join(f.name for f in fields(BatchRecord))


def new_batch_key() -> str:
    return f"rb_{uuid.uuid4().hex[:20]}"


class BatchStore:
    def __init__(self, db: Database):
        self.db = db
        self.ledger = db.ledger()

    def create(
        self,
        *,
        kind: str,
        role: str,
        base_url: str | None,
        model: str,
        scope: dict[str, object],
        requests: Sequence[OracleRequest],
        attempt: int,
        retry_of: str | None = None,
        whole_retry: bool = False,
        status: str = "preparing",
        input_file_id: str | None = None,
    ) -> BatchRecord:
        """A batch and its requests, in one transaction."""
        key = new_batch_key()
        rows = pl.DataFrame(
            {
                "batch_key": [key] * len(requests),
                "request_key": [r.key for r in requests],
                "attempt": [attempt] * len(requests),
                "request_json": [json.dumps(r.canonical(), ensure_ascii=False) for r in requests],
            },
            schema={"batch_key": pl.Utf8, "request_key": pl.Utf8, "attempt": pl.Int32, "request_json": pl.Utf8},
        )
        with self.db.transaction() as con:
            logged(
                con, self.ledger, "oracle.batches", SQL.insert_batch,
                [key, kind, role, base_url, model, scope.get("dataset"), scope.get("stage"), scope.get("shard"),
                 len(requests), attempt, retry_of, whole_retry, input_file_id, status],
            )
            con.execute(SQL.insert_batch_requests)
            self.ledger.put("oracle.batch_requests", rows.to_dicts())
        return self.get(key)

    def update(self, batch_key: str, **values: object) -> None:
        assignments = ", ".join(f"{name} = ?" for name in values)
        with self.db.transaction() as con:
            logged(
                con, self.ledger, "oracle.batches", SQL.format("update_batch", assignments=assignments),
                [*values.values(), batch_key],
            )

    def delete(self, batch_key: str) -> None:
        with self.db.transaction() as con:
            con.execute(SQL.delete_batch_requests, [batch_key])
            con.execute(SQL.delete_batch, [batch_key])
            self.ledger.delete("oracle.batch_requests", {"batch_key": batch_key}, sync=False)
            self.ledger.delete("oracle.batches", {"batch_key": batch_key})

    def get(self, batch_key: str) -> BatchRecord:
        [record] = self._select(SQL.format("batch", columns=COLUMNS), [batch_key])
        return record

    def _select(self, statement: str, params: list[object]) -> list[BatchRecord]:
        with self.db.connect() as con:
            rows = con.execute(statement, params).fetchall()
        return [BatchRecord(*row) for row in rows]

    def uncollected(self, role: str, model: str, base_url: str | None) -> list[BatchRecord]:
        """API batches at this endpoint whose replies are not stored yet: live ones, and
        finished ones a killed run never collected."""
        return self._select(SQL.format("uncollected_batches", columns=COLUMNS), [role, model, base_url])

    def listed(self, dataset: str | None = None) -> list[BatchRecord]:
        if dataset:
            return self._select(SQL.format("batches_of_dataset", columns=COLUMNS), [dataset])
        return self._select(SQL.format("all_batches", columns=COLUMNS), [])

    def keys_of(self, batch_key: str) -> list[str]:
        with self.db.connect() as con:
            rows = con.execute(SQL.batch_request_keys, [batch_key]).fetchall()
        return [row[0] for row in rows]

    def known_requests(self, keys: Iterable[str]) -> dict[str, OracleRequest]:
        """The requests behind these custom ids, as some batch or export recorded them."""
        wanted = pl.DataFrame({"request_key": sorted(set(keys))}, schema={"request_key": pl.Utf8})
        if wanted.is_empty():
            return {}
        with self.db.connect() as con:
            rows = con.execute(SQL.known_requests).fetchall()
        found = {}
        for key, text in rows:
            request = OracleRequest.from_canonical(json.loads(text))
            if request.key == key:  # written by this version of the canonical form
                found[key] = request
        return found

    def mark_imported(self) -> None:
        """Exported files whose every request now has a reply."""
        with self.db.transaction() as con:
            logged(con, self.ledger, "oracle.batches", SQL.mark_imported)
