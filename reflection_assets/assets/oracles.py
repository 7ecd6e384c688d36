"""The oracle and the judge as observable source assets. Their data version names what
changes their replies: our settings' fingerprint (backend, model, sampling, prompt version)
and, unless REFLECTION_ORACLE_PROBE=off, what really serves the model name (a probe of the
endpoint: engines/oracle/identity.py). The assets that call them become stale exactly when
another oracle would answer, and the automation re-materializes only those."""

from collections.abc import Callable

import dagster as dg

from reflection_assets.assets.failures import user_errors_fail_the_step
from reflection_assets.engines.oracle.batch import BatchScope
from reflection_assets.engines.oracle.client import OracleClient
from reflection_assets.engines.oracle.identity import ProbeError, probe
from reflection_assets.engines.oracle.settings import OracleSettings
from reflection_assets.method.profiles import judge_version, reflection_version
from reflection_assets.method.served import PROBE_OFF, ServedIdentity, oracle_data_version

DATA_VERSION_TAG = "dagster/data_version"
# The prompt version each role's fingerprint is made with, under the settings' profile.
ROLE_VERSIONS: dict[str, Callable[[str], str]] = {"oracle": reflection_version, "judge": judge_version}


def described(settings: OracleSettings, prompt_version: str, served: ServedIdentity | None = None) -> dict:
    """What a person wants to see about an oracle: never the key, the URL only as given;
    what served it, when it was probed."""
    fingerprint = settings.fingerprint(prompt_version)
    facts: dict[str, object] = {
        "data_version": oracle_data_version(fingerprint, served),
        "fingerprint": fingerprint,
        "backend": settings.backend,
        "model": settings.model,
        "base_url": settings.base_url or ("in-process" if settings.kind.in_process else "the SDK default"),
        "temperature": settings.temperature,
        "max_tokens": settings.max_tokens or 0,
        "prompt_profile": settings.prompt_profile,
        "prompt_version": prompt_version,
        "api_key": "set" if settings.api_key else "not set",
    }
    facts.update(served.as_metadata() if served else {"probe": settings.probe})
    return facts


def observation(
    settings: OracleSettings, sources: dict[str, str], prompt_version: str, served: ServedIdentity | None
) -> dg.ObserveResult:
    """The data version, the settings, what served them, and where each setting not left at
    its default came from (an environment variable, or the resource's config)."""
    facts = described(settings, prompt_version, served)
    facts["settings_from"] = {name: source for name, source in sources.items() if source != "default"}
    return dg.ObserveResult(data_version=dg.DataVersion(str(facts["data_version"])), metadata=facts)


def latest_facts(instance: dg.DagsterInstance, role: str) -> dict[str, object] | None:
    """The metadata of the latest observation of `oracle` or `judge` (a nightly one, or the
    one a materialization recorded), or None."""
    records = instance.fetch_observations(dg.AssetKey(role), limit=1).records
    if not records or records[0].asset_observation is None:
        return None
    return {name: value.value for name, value in records[0].asset_observation.metadata.items()}


def served_identity_for(instance: dg.DagsterInstance, role: str, settings: OracleSettings) -> ServedIdentity | None:
    """What serves these settings for a materialization: the last observation's, when it
    observed the same settings at the same URL (so a run's version is the observation's and
    nothing flips back and forth); otherwise a probe now. None when the probe is off."""
    if settings.probe == PROBE_OFF:
        return None
    version = ROLE_VERSIONS[role](settings.prompt_profile)
    facts = latest_facts(instance, role)
    current = described(settings, version)
    if facts and all(facts.get(k) == current[k] for k in ("fingerprint", "base_url", "probe")):
        identity = ServedIdentity.from_metadata(facts)
        if identity is not None:
            return identity
    return probe(settings)


def log_oracle_version(
    context: dg.AssetExecutionContext,
    key: str,
    settings: OracleSettings,
    prompt_version: str,
    served: ServedIdentity | None = None,
) -> None:
    """Record, from inside a materialization, the oracle version this run uses: the
    oracle's observations then show which version each run used (a run from the UI
    launchpad with other resource settings, say), and later steps of the same run read it
    as their input version. A step's own input version is fixed before it starts, which is
    why `reflection run` observes the oracle first."""
    facts = described(settings, prompt_version, served)
    context.log_event(
        dg.AssetObservation(asset_key=key, metadata=facts, tags={DATA_VERSION_TAG: str(facts["data_version"])})
    )


def llm_client(context: dg.AssetExecutionContext, role: str, resource, storage) -> OracleClient:
    """The oracle (or judge) client of a materialization, knowing what serves it and whose
    batches it makes, with the version it uses recorded as an observation."""
    keys = getattr(context.partition_key, "keys_by_dimension", None)
    dataset, shard = (keys["dataset"], int(keys["shard"])) if keys else (context.partition_key, None)
    scope = BatchScope(role, dataset, context.asset_key.to_user_string(), shard)
    with user_errors_fail_the_step():
        settings = resource.settings()
        served = served_identity_for(context.instance, role, settings)
        client = resource.client(storage, context.log, served, scope)
    log_oracle_version(context, role, settings, ROLE_VERSIONS[role](settings.prompt_profile), served)
    return client


def _llm_source(name: str, description: str):
    """An observable source for one LLM role; its resource has the same name."""

    @dg.observable_source_asset(
        name=name,
        group_name="oracles",
        required_resource_keys={name},
        description=description,
        tags={"stage": "oracle"},
    )
    def source(context) -> dg.ObserveResult:
        with user_errors_fail_the_step():
            settings, sources = getattr(context.resources, name).settings_with_sources()
        version = ROLE_VERSIONS[name](settings.prompt_profile)
        try:
            served = probe(settings)
        except ProbeError as exc:
            # Never taken for a new model: the observation fails, saying why, and the data
            # version stays what it was.
            raise dg.Failure(
                description=f"{exc}; nothing changed: the {name}'s data version stays as last observed",
                metadata={"probe_error": str(exc), "fingerprint": settings.fingerprint(version), "model": settings.model},
            ) from None
        return observation(settings, sources, version, served)

    return source


oracle = _llm_source(
    "oracle",
    "The oracle LLM that reflects (REFLECTION_ORACLE_*). Its data version is a hash of the "
    "fingerprint of backend, model, sampling and prompt version and of what really serves the "
    "model name (the probe: served model, system_fingerprint, vLLM root, Ollama digest; the "
    "model file's hash for the embedded model): when it changes, the materialized reflection "
    "shards are stale and the automation re-materializes them.",
)
judge = _llm_source(
    "judge",
    "The judge LLM of the benchmarks (REFLECTION_JUDGE_*, each falling back to the oracle's "
    "value). Its data version is its fingerprint with the judge prompt version and what "
    "serves it: when it changes, benchmark_scores is stale (answers are kept, only judging "
    "is redone).",
)
