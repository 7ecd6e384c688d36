"""`reflection status`: per dataset, which partitions of each asset are materialized,
stale (and why), failed or running, and what the oracle and the judge cost per stage."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import dagster as dg

from reflection_assets.assets.partitions import DATASETS, SHARDS, record_partition_key
from reflection_assets.dagster_private import AssetPartitionStatus, StaleCauseCategory, StaleStatus, stale_resolver
from reflection_assets.assets.oracles import DATA_VERSION_TAG
from reflection_assets.method.served import served_change

INPUT_VERSION_PREFIX = "dagster/input_data_version"  # Dagster's tag on a materialization, per input

ORACLE_KEYS = {"oracle": "oracle changed", "judge": "judge changed", "student": "student changed"}


@dataclass
class AssetStatus:
    asset: str
    partitions: int
    materialized: int = 0
    failed: list[str] = field(default_factory=list)
    in_progress: list[str] = field(default_factory=list)
    stale: dict[str, list[str]] = field(default_factory=dict)  # partition -> reasons
    missing: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)  # the materialized partitions' labels

    def reasons(self) -> Counter[str]:
        return Counter(reason for reasons in self.stale.values() for reason in reasons)


class ServedHistory:
    """What each observed version of the oracle and the judge was: its settings and what
    served them, read from their observations, to say in words why a shard is stale."""

    def __init__(self, instance: dg.DagsterInstance, limit: int = 2000):
        self.instance = instance
        self.limit = limit
        self._facts: dict[str, dict[str, dict[str, object]]] = {}
        self._latest: dict[str, str | None] = {}

    def _load(self, source: str) -> None:
        records = self.instance.fetch_observations(dg.AssetKey(source), limit=self.limit).records
        facts: dict[str, dict[str, object]] = {}
        for record in reversed(records):  # oldest first: a version's latest facts win
            observation = record.asset_observation
            version = observation.tags.get(DATA_VERSION_TAG) if observation else None
            if version:
                facts[version] = {name: value.value for name, value in observation.metadata.items()}
        self._facts[source] = facts
        latest = records[0].asset_observation if records else None
        self._latest[source] = latest.tags.get(DATA_VERSION_TAG) if latest else None

    def why(self, source: str, key: dg.AssetKey, partition: str) -> str:
        """"oracle changed", with what changed behind the name when our settings did not."""
        if source not in self._facts:
            self._load(source)
        records = self.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
        ).records
        materialization = records[0].asset_materialization if records else None
        used = materialization.tags.get(f"{INPUT_VERSION_PREFIX}/{source}") if materialization else None
        before, after = self._facts[source].get(used or ""), self._facts[source].get(self._latest[source] or "")
        change = served_change(before, after) if before and after else None
        return f"{ORACLE_KEYS[source]}: {change}" if change else ORACLE_KEYS[source]


def _reason(cause, history: ServedHistory, key: dg.AssetKey, partition: str) -> str:
    if cause.category == StaleCauseCategory.CODE:
        return f"code changed ({cause.key.asset_key.to_user_string()}: {cause.reason})"
    name = (cause.dependency or cause.key).asset_key.to_user_string()
    if name in ("oracle", "judge"):
        return history.why(name, key, partition)
    if name in ORACLE_KEYS:
        return ORACLE_KEYS[name]
    return f"upstream changed ({name})"


def asset_statuses(instance: dg.DagsterInstance, defs: dg.Definitions, dataset: str, keys: Sequence[dg.AssetKey]) -> list[AssetStatus]:
    resolver = stale_resolver(instance, defs)
    history = ServedHistory(instance)
    graph = defs.resolve_asset_graph()
    statuses: list[AssetStatus] = []
    for key in keys:
        partitions_def = defs.resolve_assets_def(key).partitions_def
        if partitions_def == DATASETS:
            partition_keys = [dataset]
        else:
            partition_keys = [str(record_partition_key(dataset, shard)) for shard in SHARDS.get_partition_keys()]
        by_partition = instance.get_status_by_partition(key, partition_keys, partitions_def) or {}
        status = AssetStatus(key.to_user_string(), len(partition_keys))
        for partition in partition_keys:
            state = by_partition.get(partition)
            label = partition.split("|")[-1] if "|" in partition else partition
            if state == AssetPartitionStatus.FAILED:
                status.failed.append(label)
            elif state == AssetPartitionStatus.IN_PROGRESS:
                status.in_progress.append(label)
            if state not in (AssetPartitionStatus.MATERIALIZED, AssetPartitionStatus.FAILED):
                if state != AssetPartitionStatus.IN_PROGRESS:
                    status.missing.append(label)
                continue
            status.materialized += state == AssetPartitionStatus.MATERIALIZED
            if state == AssetPartitionStatus.MATERIALIZED:
                status.done.append(label)
            reasons = set()
            if resolver.get_status(key, partition) == StaleStatus.STALE:
                causes = resolver.get_stale_causes(key, partition)
                reasons = {_reason(c, history, key, partition) for c in causes} or {"stale"}
            # Dagster marks only the first stage past a change; what reads a stale stage
            # is stale too, until the change has flowed down to it.
            for upstream in statuses:
                if dg.AssetKey(upstream.asset) in graph.get(key).parent_keys and (
                    label in upstream.stale or (partitions_def == DATASETS and upstream.stale and upstream.partitions > 1)
                ):
                    reasons.add(f"upstream stale ({upstream.asset})")
            if reasons:
                status.stale[label] = sorted(reasons)
        statuses.append(status)
    return statuses


@dataclass(frozen=True)
class UnobservedChange:
    """The oracle, judge or student settings the code location would use now differ from
    what was last observed: nothing is stale yet, but the next observation makes `affected`
    materialized partitions of `asset` stale, and the automation re-runs them."""

    source: str  # oracle, judge, student
    observed: str | None  # the fingerprint last observed (None: never observed)
    current: str
    asset: str
    affected: int


def unobserved_changes(instance: dg.DagsterInstance, statuses: Sequence[AssetStatus]) -> list[UnobservedChange]:
    from reflection_assets.assets.selection import student_version
    from reflection_assets.definitions import resource
    from reflection_assets.method.profiles import judge_version, reflection_version

    oracle, judge = resource("oracle").settings(), resource("judge").settings()
    current_versions = (
        ("oracle", oracle.fingerprint(reflection_version(oracle.prompt_profile)), "reflected_instructions"),
        ("judge", judge.fingerprint(judge_version(judge.prompt_profile)), "benchmark_scores"),
        ("student", student_version(resource("student"), resource("storage"))[0], "student_scores"),
    )
    materialized = {s.asset: s.materialized for s in statuses}
    changes = []
    for source, current, asset in current_versions:
        record = instance.get_latest_data_version_record(dg.AssetKey(source), is_source=True)
        observation = record.asset_observation if record else None
        observed = None
        if observation is not None:
            # The oracle's and judge's data versions also name what served them; the
            # fingerprint of our settings is what the code location's settings change.
            recorded = observation.metadata.get("fingerprint")
            observed = str(recorded.value) if recorded is not None else observation.data_version
        if observed is not None and observed != current:
            changes.append(UnobservedChange(source, observed, current, asset, materialized.get(asset, 0)))
    return changes


def _listed(labels: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(labels[:limit])
    return shown + (f" and {len(labels) - limit} more" if len(labels) > limit else "")


def render(
    dataset: str,
    statuses: Sequence[AssetStatus],
    spend: Sequence[tuple[str, int, int, float]],
    changes: Sequence[UnobservedChange] = (),
    absent: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """`absent`: per asset, the shards Dagster has materialized that the store has no rows
    of (a store rebuilt from its ledger, or replaced)."""
    lines = [f"dataset {dataset}"]
    for change in changes:
        lines.append(
            f"  {change.source} settings changed, not yet observed ({change.observed} -> {change.current}): "
            f"{change.affected} {'shard' if change.asset != 'benchmark_scores' else 'partition'}"
            f"{'s' if change.affected != 1 else ''} of {change.asset} will be re-"
            f"{'recycled' if change.source == 'oracle' else 'scored'} once observed "
            "(`reflection observe`, or the nightly schedule)"
        )
    width = max(len(s.asset) for s in statuses)
    for s in statuses:
        stale = len(s.stale)
        line = f"  {s.asset:<{width}}  {s.materialized:>3}/{s.partitions} materialized"
        line += f", {stale} stale" if stale else ""
        line += f", {len(s.failed)} failed" if s.failed else ""
        line += f", {len(s.in_progress)} running" if s.in_progress else ""
        lines.append(line)
        for reason, count in sorted(s.reasons().items()):
            which = [p for p, reasons in s.stale.items() if reason in reasons]
            lines.append(f"  {'':<{width}}    stale: {reason} — {_listed(which)}")
        if s.failed:
            lines.append(f"  {'':<{width}}    failed (latest run): {_listed(s.failed)}")
        if s.missing and s.materialized:
            lines.append(f"  {'':<{width}}    never materialized: {_listed(s.missing)}")
        if (absent or {}).get(s.asset):
            lines.append(f"  {'':<{width}}    materialized, but the store has no record of: {_listed(absent[s.asset])} "
                         "(rebuilt or replaced since) — materialize again")
    if spend:
        lines.append("  oracle calls behind the current rows:")
        for stage, calls, tokens, cost in spend:
            lines.append(f"    {stage:<26} {calls:>7} calls {tokens:>12,} tokens  ${cost:.4f}")
    return lines
