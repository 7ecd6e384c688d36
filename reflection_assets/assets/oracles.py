"""The oracle and the judge as observable source assets. Their data version is the
fingerprint of what changes their replies (backend, model, sampling, prompt version), so
the assets that call them become stale exactly when a different oracle would answer, and
the automation re-materializes only those."""

from collections.abc import Callable

import dagster as dg

from reflection_assets.engines.oracle.settings import OracleSettings
from reflection_assets.method.profiles import judge_version, reflection_version

DATA_VERSION_TAG = "dagster/data_version"


def described(settings: OracleSettings, prompt_version: str) -> dict:
    """What a person wants to see about an oracle: never the key, the URL only as given."""
    return {
        "fingerprint": settings.fingerprint(prompt_version),
        "backend": settings.backend,
        "model": settings.model,
        "base_url": settings.base_url or ("in-process" if settings.backend == "local" else "the SDK default"),
        "temperature": settings.temperature,
        "max_tokens": settings.max_tokens or 0,
        "prompt_profile": settings.prompt_profile,
        "prompt_version": prompt_version,
        "api_key": "set" if settings.api_key else "not set",
    }


def observation(settings: OracleSettings, sources: dict[str, str], prompt_version: str) -> dg.ObserveResult:
    """The fingerprint as data version; the settings, and where each one not left at its
    default came from (an environment variable, or the resource's config)."""
    facts = described(settings, prompt_version)
    facts["settings_from"] = {name: source for name, source in sources.items() if source != "default"}
    return dg.ObserveResult(data_version=dg.DataVersion(facts["fingerprint"]), metadata=facts)


def log_oracle_version(context: dg.AssetExecutionContext, key: str, settings: OracleSettings, prompt_version: str) -> None:
    """Record, from inside a materialization, the oracle version this run uses: the
    oracle's observations then show which version each run used (a run from the UI
    launchpad with other resource settings, say), and later steps of the same run read it
    as their input version. A step's own input version is fixed before it starts, which is
    why `reflection run` observes the oracle first."""
    facts = described(settings, prompt_version)
    context.log_event(
        dg.AssetObservation(asset_key=key, metadata=facts, tags={DATA_VERSION_TAG: str(facts["fingerprint"])})
    )


def _llm_source(name: str, version_of: Callable[[str], str], description: str):
    """An observable source for one LLM role; its resource has the same name. `version_of`
    gives the role's prompt version under the settings' prompt profile."""

    @dg.observable_source_asset(
        name=name,
        group_name="oracles",
        required_resource_keys={name},
        description=description,
        tags={"stage": "oracle"},
    )
    def source(context) -> dg.ObserveResult:
        settings, sources = getattr(context.resources, name).settings_with_sources()
        return observation(settings, sources, version_of(settings.prompt_profile))

    return source


oracle = _llm_source(
    "oracle",
    reflection_version,
    "The oracle LLM that reflects (REFLECTION_ORACLE_*). Its data version is the fingerprint "
    "of backend, model, sampling and prompt version: when it changes, the materialized "
    "reflection shards are stale and the automation re-materializes them.",
)
judge = _llm_source(
    "judge",
    judge_version,
    "The judge LLM of the benchmarks (REFLECTION_JUDGE_*, each falling back to the oracle's "
    "value). Its data version is its fingerprint with the judge prompt version: when it "
    "changes, benchmark_scores is stale (answers are kept, only judging is redone).",
)
