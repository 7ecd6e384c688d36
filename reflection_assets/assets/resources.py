"""Dagster resources: the handles assets get to the world."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar, Optional

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import Field

from reflection_assets.engines.datasets import DatasetRegistry
from reflection_assets.engines.oracle.client import OracleClient
from reflection_assets.engines.oracle.settings import (
    JUDGE_PREFIX,
    ORACLE_PREFIX,
    OracleSettings,
    settings_from_env,
)
from reflection_assets.engines.settings import default_artifacts, default_database
from reflection_assets.engines.storage import Database

# Every asset that writes the DuckDB file runs in this pool; dagster_home/dagster.yaml
# limits pools to one step at a time, matching DuckDB's single writer.
DUCKDB_POOL = "duckdb"
OWNER = "team:data-recycling"


class StorageResource(DuckDBResource):
    """The DuckDB database and the folder for model artifacts: dagster-duckdb's DuckDBResource
    (`database`, `connection_config`, `get_connection()`), plus what this project needs of
    it: the schema set up from the package's SQL on first connection, read-only access, and
    waiting out another process's write lock (up to `lock_timeout_s`) with a clear error.

    Left empty, `database` and `artifacts` come from REFLECTION_DUCKDB / REFLECTION_ARTIFACTS
    or sit under $DAGSTER_HOME, read when used, so the CLI, the UI and the tests agree."""

    database: str = Field(
        default="",
        description="The DuckDB file. Empty: REFLECTION_DUCKDB, or $DAGSTER_HOME/reflection.duckdb.",
    )
    artifacts: str = Field(
        default="",
        description="The folder for adapters and converted models. Empty: REFLECTION_ARTIFACTS, "
        "or $DAGSTER_HOME/artifacts.",
    )
    lock_timeout_s: float = Field(
        default=300.0, description="How long to wait for another process's write lock on the file."
    )

    def database_path(self) -> str:
        return self.database or default_database()

    def artifacts_path(self) -> str:
        return self.artifacts or default_artifacts()

    def db(self) -> Database:
        return Database(self.database_path(), self.lock_timeout_s, self.connection_config)

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """DuckDBResource's connection, with the schema set up and lock waits."""
        with self.db().connect() as con:
            yield con

    def registry(self) -> DatasetRegistry:
        return DatasetRegistry(self.db())


class OracleResource(dg.ConfigurableResource):
    """The oracle LLM: the embedded model (backend `local`, the default) or any
    OpenAI-compatible endpoint (backend `openai`). Unset fields come from
    REFLECTION_ORACLE_* environment variables; see the README for each."""

    ENV_PREFIX: ClassVar[str] = ORACLE_PREFIX

    backend: Optional[str] = None
    model: Optional[str] = None
    base_url: Optional[str] = None
    api_key: Optional[str] = None  # prefer the environment variable: never shown or stored
    temperature: Optional[float] = None
    max_tokens: Optional[int] = None
    seed: Optional[int] = None
    timeout_s: Optional[float] = None
    max_concurrency: Optional[int] = None
    rpm: Optional[int] = None
    tpm: Optional[int] = None
    max_retries: Optional[int] = None
    budget_usd: Optional[float] = None
    batch_size: Optional[int] = None
    dtype: Optional[str] = None
    repetition_penalty: Optional[float] = None
    no_repeat_ngram: Optional[int] = None
    prompts: Optional[str] = None

    def settings(self) -> OracleSettings:
        overrides = {name: getattr(self, name) for name in type(self).model_fields}
        return settings_from_env(self.ENV_PREFIX, **overrides)

    def client(self, storage: StorageResource, log: Optional[logging.Logger] = None) -> OracleClient:
        return OracleClient(self.settings(), storage.db(), storage.artifacts_path(), log)


class JudgeResource(OracleResource):
    """The judge LLM for benchmarks: REFLECTION_JUDGE_* variables, each falling back to
    the oracle's REFLECTION_ORACLE_* value."""

    ENV_PREFIX: ClassVar[str] = JUDGE_PREFIX
