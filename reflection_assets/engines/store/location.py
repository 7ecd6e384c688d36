"""Where the store is, and how long one of its reads or writes waits for another process:
what the definitions' `storage` resource (assets/resources.StorageResource) holds, without
Dagster. The resource's fields are these; the commands that only read or write the store
(`datasets list`, `export`, `lineage`, `doctor`, `scores`, `batch list`, ...) take this
instead of the resource, and start without importing Dagster and the definitions (`datasets
list` 0.51 s against 2.19 s on 2 cores: benchmarks/command_imports.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from reflection_assets.engines.settings import default_artifacts, default_database
from reflection_assets.engines.store.storage import Database

LOCK_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class StoreLocation:
    """Empty `database` and `artifacts` come from REFLECTION_DUCKDB / REFLECTION_ARTIFACTS or
    sit under $DAGSTER_HOME, read when used (engines/settings.py), as the resource's do: the
    code location sets them only from those variables."""

    database: str = ""
    artifacts: str = ""
    lock_timeout_s: float = LOCK_TIMEOUT_S
    connection_config: dict = field(default_factory=dict)

    def database_path(self) -> str:
        return self.database or default_database()

    def artifacts_path(self) -> str:
        return self.artifacts or default_artifacts()

    def db(self) -> Database:
        return Database(self.database_path(), self.lock_timeout_s, self.connection_config)
