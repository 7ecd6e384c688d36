"""The reflection stages: reflected_instructions, reflected_responses, recycled_dataset."""

from collections import Counter
from typing import Literal

import dagster as dg
import polars as pl

from reflection_assets.assets.automation import STALE_ONLY
from reflection_assets.assets.failures import user_errors_fail_the_step
from reflection_assets.assets.metadata import preview_table
from reflection_assets.assets.oracles import llm_client
from reflection_assets.assets.oracles import oracle as oracle_source
from reflection_assets.assets.partitions import RECORD_PARTITIONS, dataset_and_shard
from reflection_assets.assets.raw import raw_dataset
from reflection_assets.assets.resources import OWNER, OracleResource, StorageResource, oracle_pool, step_pool
from reflection_assets.engines.oracle.client import OracleClient
from reflection_assets.engines.reflection.phases import PhaseResult, prompt_version, reflect_instructions, reflect_responses, repair_calls
from reflection_assets.engines.reflection.store import (
    recycled_summary,
    response_variants,
    served_by,
    shard_health,
    phase1_pairs,
    write_instruction_results,
    write_recycled,
    write_response_results,
)
from reflection_assets.engines.store.storage import Database
from reflection_assets.method.parsing import ALL_OUTCOMES
from reflection_assets.method.profiles import PROFILES
from reflection_assets.method.prompts import BETTER_ANSWER, NEW_ANSWER, NEW_INSTRUCTION

HEALTH_CHECKS = [
    ("ok_share", "The share of replies that parsed (after repair) is at least min_ok_share."),
    ("no_empty_replacements", "No record was replaced by empty text."),
    ("no_pair_mixing", "A pair is replaced as a whole: never a new instruction with an old answer."),
]


def _check_specs(asset: str) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(name, asset=asset, description=text) for name, text in HEALTH_CHECKS]


class ReflectionConfig(dg.Config):
    repair: Literal["auto", "on", "off"] = "auto"
    """Give a reply that failed to parse one follow-up call that says what was wrong. auto:
    on for endpoints, off for the embedded model, whose failed replies are echo loops that
    a second call does not fix (it doubles the time for nothing)."""
    min_ok_share: float = 0.5
    """The ok_share check's floor."""
    ok_share_severity: Literal["auto", "WARN", "ERROR"] = "auto"
    """auto: WARN on the embedded model (a weak rewriter), ERROR on any other oracle."""


class ResponseReflectionConfig(ReflectionConfig):
    also_original: bool = True
    """Also reflect the original pair's response (variant 'original'): needed by
    selective recycling (student_scores) and by the response-only recycling mode. Where
    phase 1 kept a pair it is the same request as the chain's, paid once; set false for
    V1 alone to save one oracle call per record that phase 1 rewrote."""


class RecycleConfig(dg.Config):
    mode: Literal["chain", "instruction", "response"] = "chain"
    """chain: phase 2 on phase 1's pair (V1's Recycled sets); instruction: phase 1 only;
    response: phase 2 on the original pair (needs reflected_responses also_original)."""


def _phase_metadata(results: list[PhaseResult], client: OracleClient, before_after: dict[str, tuple[str, str]]):
    outcomes = Counter(r.outcome for r in results)
    replaced = [r for r in results if r.ok]
    preview_rows = []
    lengths: dict[str, list[int]] = {f"{side}_{field}": [] for side in ("before", "after") for field in before_after}
    for r in replaced:
        row = {"record_id": r.pair.record_id}
        for field, (old_attr, section) in before_after.items():
            old, new = getattr(r.pair, old_attr), r.sections[section]
            lengths[f"before_{field}"].append(len(old))
            lengths[f"after_{field}"].append(len(new))
            row[f"{field} before"], row[f"{field} after"] = old, new
        preview_rows.append(row)
    mean = {k: round(sum(v) / len(v), 1) if v else 0.0 for k, v in lengths.items()}
    return {
        "dagster/row_count": len(results),
        "outcomes": {name: outcomes.get(name, 0) for name in ALL_OUTCOMES},
        "replaced": len(replaced),
        "repaired": sum(r.repaired for r in results),
        "ok_share": len(replaced) / len(results) if results else 0.0,
        "mean_chars_of_replaced": mean,
        "prompt_tokens": sum(r.prompt_tokens for r in results),
        "completion_tokens": sum(r.completion_tokens for r in results),
        "cost_usd": round(sum(r.cost_usd for r in results), 6),
        "oracle/fingerprint": client.fingerprint(prompt_version(client)),
        "oracle/model": client.settings.model,
        "oracle/mode": client.settings.mode,
        "oracle/served_identity": client.served.describe() if client.served else "not probed (REFLECTION_ORACLE_PROBE=off)",
        "prompt_profile": client.settings.prompt_profile,
        "prompt_version": prompt_version(client),
        "preview": preview_table(pl.DataFrame(preview_rows[:5]) if preview_rows else pl.DataFrame()),
        **client.stats.as_metadata(),
    }


def _repair(config: ReflectionConfig, client: OracleClient) -> bool:
    return repair_calls(config.repair, client.settings.kind.repair_default)


def _health_checks(
    db: Database, stage: str, dataset: str, shard: int, config: ReflectionConfig, client: OracleClient
) -> list[dg.AssetCheckResult]:
    health = shard_health(db, stage, dataset, shard)
    empty, mixed = health.empty_replacements, health.mixed_pairs
    share = health.ok / health.rows if health.rows else 1.0
    severity = config.ok_share_severity
    if severity == "auto":
        severity = client.settings.kind.ok_share_severity
    return [
        dg.AssetCheckResult(
            check_name="ok_share",
            passed=share >= config.min_ok_share,
            severity=dg.AssetCheckSeverity(severity),
            metadata={"ok_share": share, "min_ok_share": config.min_ok_share},
            description=f"{share:.0%} of replies usable (floor {config.min_ok_share:.0%})",
        ),
        dg.AssetCheckResult(check_name="no_empty_replacements", passed=empty == 0, metadata={"empty": empty}),
        dg.AssetCheckResult(check_name="no_pair_mixing", passed=mixed == 0, metadata={"mixed_pairs": mixed}),
    ]


def _oracle_stage(name: str, upstream: dg.AssetsDefinition) -> dict:
    """What the two oracle-calling stages share: partitions, pool, checks, lineage tags, and
    the oracle source asset, whose version change makes their shards stale."""
    return dict(
        name=name,
        partitions_def=RECORD_PARTITIONS,
        deps=[upstream, oracle_source],
        automation_condition=STALE_ONLY,
        pool=oracle_pool(),
        group_name="reflection",
        kinds={"duckdb", "openai"},
        owners=[OWNER],
        tags={"stage": "reflection"},
        # Either profile's prompts changing is a code change of these stages.
        code_version="+".join(p.version for p in PROFILES.values()),
        check_specs=_check_specs(name),
    )


@dg.asset(**_oracle_stage("reflected_instructions", raw_dataset))
def reflected_instructions(
    context: dg.AssetExecutionContext,
    config: ReflectionConfig,
    storage: StorageResource,
    oracle: OracleResource,
) -> dg.MaterializeResult:
    """Phase 1 of Reflection-Tuning for one shard: the oracle writes a harder, self-contained
    instruction and its answer, judged on the method's criteria (with the paper's prompts it
    critiques the instruction on five and the answer on four first). A record is replaced as
    a whole (new instruction and new answer) or kept; every reply's outcome and reason is
    recorded. Table: reflect.instructions."""
    dataset, shard = dataset_and_shard(context)
    db = storage.db()
    client = llm_client(context, "oracle", oracle, storage)
    version = prompt_version(client)
    with user_errors_fail_the_step():
        pairs = phase1_pairs(db, dataset, shard)
    results = reflect_instructions(client, pairs, _repair(config, client))
    with db.held():
        write_instruction_results(db, dataset, shard, results, client.fingerprint(version), version)
        metadata = _phase_metadata(
            results, client, {"instruction": ("instruction", NEW_INSTRUCTION), "output": ("output", NEW_ANSWER)}
        )
        metadata["served_by"] = served_by(db, "instructions", dataset, shard)
        checks = _health_checks(db, "instructions", dataset, shard, config, client)
    return dg.MaterializeResult(metadata=metadata, check_results=checks)


@dg.asset(**_oracle_stage("reflected_responses", reflected_instructions))
def reflected_responses(
    context: dg.AssetExecutionContext,
    config: ResponseReflectionConfig,
    storage: StorageResource,
    oracle: OracleResource,
) -> dg.MaterializeResult:
    """Phase 2 of Reflection-Tuning for one shard: the oracle critiques each answer on four
    criteria and writes a better one, for the pair phase 1 produced (variant `chain`, as
    V1's Recycled sets) and, with also_original, for the original pair (variant
    `original`). Table: reflect.responses."""
    dataset, shard = dataset_and_shard(context)
    db = storage.db()
    with user_errors_fail_the_step(), db.held():
        variants = response_variants(db, dataset, shard, config.also_original)
    client = llm_client(context, "oracle", oracle, storage)
    version = prompt_version(client)
    # Both variants go to the oracle together; where phase 1 kept a pair, they are the
    # same request and are paid once.
    all_results = reflect_responses(
        client, [p for pairs, _ in variants.values() for p in pairs], _repair(config, client)
    )
    by_variant, start = {}, 0
    for name, (pairs, ids) in variants.items():
        by_variant[name] = (all_results[start : start + len(pairs)], ids)
        start += len(pairs)
    with db.held():
        write_response_results(db, dataset, shard, by_variant, client.fingerprint(version), version)
        metadata = _phase_metadata(by_variant["chain"][0], client, {"output": ("output", BETTER_ANSWER)})
        metadata["variants"] = sorted(variants)
        metadata["served_by"] = served_by(db, "responses", dataset, shard)
        checks = _health_checks(db, "responses", dataset, shard, config, client)
    return dg.MaterializeResult(metadata=metadata, check_results=checks)


@dg.asset(
    partitions_def=RECORD_PARTITIONS,
    pool=step_pool(runs_model=False),
    deps=[reflected_responses],
    automation_condition=STALE_ONLY,
    group_name="reflection",
    kinds={"duckdb"},
    owners=[OWNER],
    tags={"stage": "recycled"},
    code_version="1",
)
def recycled_dataset(
    context: dg.AssetExecutionContext, config: RecycleConfig, storage: StorageResource
) -> dg.MaterializeResult:
    """The recycled training set for one shard: one row per record, its instruction, input
    and output after reflection, with provenance (original, instruction_reflected,
    response_reflected, both) and lineage columns back to the source row and the oracle
    requests. Table: reflect.recycled."""
    dataset, shard = dataset_and_shard(context)
    db = storage.db()
    with user_errors_fail_the_step(), db.held():
        rows = write_recycled(db, dataset, shard, config.mode)
        summary = recycled_summary(db, dataset, shard)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows,
            "mode": config.mode,
            "provenance": summary.provenance,
            "mean_chars": summary.mean_chars,
            "preview": preview_table(summary.preview),
            "dagster/column_lineage": dg.TableColumnLineage(
                deps_by_column={
                    "instruction": [
                        dg.TableColumnDep(asset_key=dg.AssetKey("raw_dataset"), column_name="instruction"),
                        dg.TableColumnDep(asset_key=dg.AssetKey("reflected_instructions"), column_name="new_instruction"),
                    ],
                    "output": [
                        dg.TableColumnDep(asset_key=dg.AssetKey("raw_dataset"), column_name="output"),
                        dg.TableColumnDep(asset_key=dg.AssetKey("reflected_instructions"), column_name="new_output"),
                        dg.TableColumnDep(asset_key=dg.AssetKey("reflected_responses"), column_name="better_output"),
                    ],
                }
            ),
        }
    )
