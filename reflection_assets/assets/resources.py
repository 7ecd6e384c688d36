"""Dagster resources: the handles assets get to the world."""

from typing import Optional

import dagster as dg

from reflection_assets.engines.datasets import DatasetRegistry
from reflection_assets.engines.settings import default_artifacts, default_database
from reflection_assets.engines.storage import Database

# Every asset that writes the DuckDB file runs in this pool; dagster_home/dagster.yaml
# limits pools to one step at a time, matching DuckDB's single writer.
DUCKDB_POOL = "duckdb"
OWNER = "team:data-recycling"


class StorageResource(dg.ConfigurableResource):
    """The DuckDB database file and the folder for model artifacts.

    Left unset, they come from REFLECTION_DUCKDB / REFLECTION_ARTIFACTS or sit under
    $DAGSTER_HOME, read when used, so the CLI, the UI and the tests agree."""

    database: Optional[str] = None
    artifacts: Optional[str] = None
    lock_timeout_s: float = 300.0

    def database_path(self) -> str:
        return self.database or default_database()

    def artifacts_path(self) -> str:
        return self.artifacts or default_artifacts()

    def db(self) -> Database:
        return Database(self.database_path(), self.lock_timeout_s)

    def registry(self) -> DatasetRegistry:
        return DatasetRegistry(self.db())
