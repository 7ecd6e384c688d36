"""Dagster resources: the handles assets get to the world."""

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import ClassVar, Optional

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import Field, create_model

from reflection_assets.dagster_private import install_pool_wait, install_pooled_event_log, install_threaded_log_tail
from reflection_assets.engines.data.datasets import DatasetRegistry
from reflection_assets.engines.oracle.batch import BatchScope
from reflection_assets.engines.oracle.client import OracleClient
from reflection_assets.engines.oracle.kinds import KINDS
from reflection_assets.engines.oracle.settings import (
    JUDGE_PREFIX,
    ORACLE_PREFIX,
    EnvSetting,
    OracleSettings,
    env_settings,
    settings_with_sources,
)
from reflection_assets.engines.settings import pool_report_s
from reflection_assets.engines.store.location import LOCK_TIMEOUT_S, StoreLocation
from reflection_assets.engines.store.storage import Database
from reflection_assets.method.served import ServedIdentity

# What is really scarce: the steps that run a model (training, answering, scoring, the
# embedded oracle) take a slot of this pool, whose limit is the number of devices (1 by the
# instance's default_limit: two local models never fight over the same cores or GPU). The
# store needs no pool: engines/store/storage.py holds it only while a step reads or writes.
GPU_POOL = "gpu"
OWNER = "team:data-recycling"


def step_pool(runs_model: bool, environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """An asset's pool, as the code location loads: `gpu` for a step that runs a model, none
    for the others. REFLECTION_STORE_POOL=NAME puts every asset in pool NAME instead, so that
    a step holds the store for its whole duration (as before 2026-12): for a store on a file
    system whose locks do not reach between processes (docs/operations.md, "Many processes, one store")."""
    environ = os.environ if environ is None else environ
    return environ.get("REFLECTION_STORE_POOL") or (GPU_POOL if runs_model else None)


def oracle_pool(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The pool of a stage that calls the oracle: `gpu` when the oracle is the embedded model
    (REFLECTION_ORACLE_BACKEND unset or `local`, as the code location loads), none for an
    endpoint, whose limits are the client's (concurrency, RPM, TPM)."""
    environ = os.environ if environ is None else environ
    kind = KINDS.get(environ.get(ORACLE_PREFIX + "BACKEND") or "local")
    return step_pool(kind is not None and kind.in_process, environ)


class StorageResource(DuckDBResource):
    """The DuckDB database and the folder for model artifacts: dagster-duckdb's DuckDBResource
    (`database`, `connection_config`, `get_connection()`), plus what this project needs of
    it: the schema set up from the package's SQL when it changed, read-only access, and
    queueing on the store's lock for each read or write (up to `lock_timeout_s`, then a clear
    error naming the holder): engines/store/storage.py.

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
        default=LOCK_TIMEOUT_S, description="How long one read or write waits for the store's lock held by another process."
    )

    @classmethod
    def from_environment(cls, environ: Optional[Mapping[str, str]] = None) -> "StorageResource":
        """As the code location builds it: REFLECTION_DUCKDB / REFLECTION_ARTIFACTS, when set,
        as `dg.EnvVar`s, so the UI shows where the paths come from."""
        environ = os.environ if environ is None else environ
        names = {"database": "REFLECTION_DUCKDB", "artifacts": "REFLECTION_ARTIFACTS"}
        return cls(**{field: dg.EnvVar(var) for field, var in names.items() if environ.get(var)})

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """At the start of a run that uses the store (every asset step does): the in-process
        executor's wait for a pool slot sleeps between polls, says who holds the slot and
        stops on SIGTERM / Ctrl-C (dagster_private.install_pool_wait: Dagster 1.13 polls
        without sleeping and swallows the interrupt). Done here, not when the definitions are
        imported, so that loading them leaves Dagster as it was. Also: Dagster's SQLite event
        log keeps a connection per file instead of one per event
        (dagster_private.install_pooled_event_log: a third of a shard's run), the run's
        captured output is mirrored by a thread, not by four processes
        (install_threaded_log_tail), and the store stays open between the run's reads and
        writes while no other process waits for it (engines/store/storage.py: each open costs
        15 to 30 ms, a shard's run makes a dozen)."""
        install_pool_wait(report_s=pool_report_s())
        install_pooled_event_log()
        install_threaded_log_tail()
        self.db().linger_start()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        """At the end of the run: the store, kept open between the run's accesses while no
        other process waited for it (Database.lingering), is let go."""
        self.db().linger_stop()

    def location(self) -> StoreLocation:
        """These fields without Dagster: what the commands that only use the store take
        (engines/store/location.py)."""
        return StoreLocation(self.database, self.artifacts, self.lock_timeout_s, dict(self.connection_config))

    def database_path(self) -> str:
        return self.location().database_path()

    def artifacts_path(self) -> str:
        return self.location().artifacts_path()

    def db(self) -> Database:
        return self.location().db()

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """DuckDBResource's connection, with the schema set up and lock waits."""
        with self.db().connect() as con:
            yield con

    def registry(self) -> DatasetRegistry:
        return DatasetRegistry(self.db())


class _LLMResource(dg.ConfigurableResource):
    """What the oracle and the judge resources do; their fields come from OracleSettings."""

    ENV_PREFIX: ClassVar[str] = ORACLE_PREFIX
    ROLE: ClassVar[str] = "oracle"

    def settings(self) -> OracleSettings:
        return self.settings_with_sources()[0]

    def settings_with_sources(self) -> tuple[OracleSettings, dict[str, str]]:
        overrides = {entry.name: getattr(self, entry.name) for entry in env_settings()}
        return settings_with_sources(self.ENV_PREFIX, **overrides)

    def client(
        self,
        storage: StorageResource,
        log: Optional[logging.Logger] = None,
        served: Optional[ServedIdentity] = None,
        scope: Optional[BatchScope] = None,
        client_class: type[OracleClient] = OracleClient,
    ) -> OracleClient:
        """The client; `served` is what serves the model name (assets.oracles.llm_client),
        `scope` says whose batches it makes in batch mode."""
        scope = scope or BatchScope(self.ROLE)
        return client_class(self.settings(), storage.db(), storage.artifacts_path(), log, served=served, scope=scope)

    @classmethod
    def from_environment(cls, environ: Optional[Mapping[str, str]] = None) -> "_LLMResource":
        """The resource as the code location builds it (env_var_values): the judge's
        variables first, then the oracle's."""
        return cls(**env_var_values(env_settings(), (cls.ENV_PREFIX, ORACLE_PREFIX), environ))


def env_var_values(
    entries: list[EnvSetting], prefixes: tuple[str, ...], environ: Optional[Mapping[str, str]] = None
) -> dict[str, object]:
    """A resource's fields as the code location builds them: each text or whole-number
    setting set in the environment (under the first prefix that sets it) as a `dg.EnvVar`,
    so the UI shows which variable it comes from. Numbers with decimals cannot be (Dagster
    has no float EnvVar); they, and everything unset, are read when the resource is used."""
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for entry in entries:
        for prefix in dict.fromkeys(prefixes):
            variable = prefix + entry.env
            if environ.get(variable) and entry.kind in (str, int):
                values[entry.name] = dg.EnvVar(variable) if entry.kind is str else dg.EnvVar.int(variable)
                break
    return values


def resource_field(entry: EnvSetting, unset: str) -> tuple[object, object]:
    """A resource field for a setting: optional, described by its doc, default and where an
    unset value comes from."""
    default = "" if entry.default is None else f" Default: {entry.default}."
    return (Optional[entry.kind], Field(default=None, description=f"{entry.doc}.{default} Unset: {unset}."))


def _field(entry: EnvSetting) -> tuple[object, object]:
    return resource_field(
        entry, f"REFLECTION_ORACLE_{entry.env} (the judge: REFLECTION_JUDGE_{entry.env}, then the oracle's)"
    )


OracleResource = create_model(
    "OracleResource",
    __base__=_LLMResource,
    __module__=__name__,
    __doc__="The oracle LLM: the embedded model (backend `local`, the default) or any "
    "OpenAI-compatible endpoint (backend `openai`). Every field is a setting of "
    "OracleSettings (engines/oracle/settings.py); a field left unset comes from its "
    "REFLECTION_ORACLE_* environment variable, or the default.",
    **{entry.name: _field(entry) for entry in env_settings()},
)


class JudgeResource(OracleResource):  # type: ignore[misc, valid-type]
    """The judge LLM for benchmarks: REFLECTION_JUDGE_* variables, each falling back to
    the oracle's REFLECTION_ORACLE_* value."""

    ENV_PREFIX: ClassVar[str] = JUDGE_PREFIX
    ROLE: ClassVar[str] = "judge"
