"""Selective recycling (V2, arXiv 2402.10110): the student, an observable source like the
oracle; student_scores (IFD and r-IFD of every variant of every record); selective_dataset
(what the official rule keeps). selective_adapter is made like the other adapters
(assets/adapters.py)."""

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

import dagster as dg
import polars as pl
from pydantic import create_model

from reflection_assets.assets.automation import STALE_ONLY
from reflection_assets.assets.failures import user_errors_fail_the_step
from reflection_assets.assets.metadata import preview_table, png_markdown
from reflection_assets.assets.partitions import RECORD_PARTITIONS, dataset_and_shard
from reflection_assets.assets.reflection import reflected_responses
from reflection_assets.assets.resources import OWNER, StorageResource, env_var_values, resource_field, step_pool
from reflection_assets.engines.selection.ifd import STUDENT_PREFIX, ScoringError, StudentScorer, StudentSettings
from reflection_assets.engines.oracle.settings import env_settings, read_settings
from reflection_assets.engines.selection.store import score_distribution, score_shard, select_shard
from reflection_assets.method.digests import json_digest
from reflection_assets.method.selection import VARIANTS


class _StudentResourceBase(dg.ConfigurableResource):
    def settings_with_sources(self) -> tuple[StudentSettings, dict[str, str]]:
        overrides = {entry.name: getattr(self, entry.name) for entry in env_settings(StudentSettings)}
        return read_settings(StudentSettings, STUDENT_PREFIX, **overrides)  # type: ignore[return-value]

    def scorer(self, storage: StorageResource, log=print) -> StudentScorer:
        return StudentScorer.of(self.settings_with_sources()[0], storage.artifacts_path(), log)

    @classmethod
    def from_environment(cls, environ: Optional[Mapping[str, str]] = None) -> "_StudentResourceBase":
        return cls(**env_var_values(env_settings(StudentSettings), (STUDENT_PREFIX,), environ))


StudentResource = create_model(
    "StudentResource",
    __base__=_StudentResourceBase,
    __module__=__name__,
    __doc__="The student that scores variants for selective recycling. Every field is a "
    "setting of StudentSettings (engines/selection/ifd.py); a field left unset comes from its "
    "REFLECTION_STUDENT_* environment variable, or the default.",
    **{e.name: resource_field(e, STUDENT_PREFIX + e.env) for e in env_settings(StudentSettings)},
)


def student_version(resource: _StudentResourceBase, storage: StorageResource) -> tuple[str, dict[str, object]]:
    """The student's data version (a hash of what changes its scores) and what it hashes."""
    key = resource.scorer(storage).settings_key()
    return json_digest(key, ascii=True), key


@dg.observable_source_asset(
    name="student",
    group_name="oracles",
    required_resource_keys={"student", "storage"},
    description="The student that scores variants for selective recycling (REFLECTION_STUDENT_*). "
    "Its data version is a hash of the model's identity (for the embedded model, its wheel's "
    "version), the template, max_length and precision: when it changes, student_scores is "
    "stale and the automation re-scores.",
    tags={"stage": "oracle"},
)
def student(context) -> dg.ObserveResult:
    resource: _StudentResourceBase = context.resources.student
    with user_errors_fail_the_step():
        _, sources = resource.settings_with_sources()
        version, key = student_version(resource, context.resources.storage)
    metadata = {"fingerprint": version, **{name: str(value) for name, value in key.items()}}
    metadata["settings_from"] = {name: source for name, source in sources.items() if source != "default"}
    return dg.ObserveResult(data_version=dg.DataVersion(version), metadata=metadata)


HISTOGRAM_TOP = 3.0


def _histogram(frame: pl.DataFrame, path: Path) -> None:
    """IFD and r-IFD per variant, with the rule's threshold at 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), dpi=100)
    # A few pairs score far above 1 (IFD 100 and more on a small student): they are drawn
    # in the last bin, so the part around the threshold stays readable.
    top = HISTOGRAM_TOP
    bins = [top * i / 30 for i in range(31)]
    for ax, column, title in ((axes[0], "ifd", "IFD"), (axes[1], "r_ifd", "r-IFD")):
        for variant in VARIANTS:
            values = [min(v, top) for v in frame.filter(pl.col("variant") == variant)[column].to_list()]
            if values:
                ax.hist(values, bins=bins, histtype="step", label=f"{variant} ({len(values)})")
        ax.axvline(1.0, color="black", linestyle=":", linewidth=1)
        ax.set_title(f"{title} (below 1: the student can use the pair)", fontsize=10)
        ax.set_xlabel(f"{title}; the last bin holds {top:g} and above")
    axes[0].set_ylabel("variants")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@dg.asset(
    partitions_def=RECORD_PARTITIONS,
    deps=[reflected_responses, student],
    automation_condition=STALE_ONLY,
    pool=step_pool(runs_model=True),
    group_name="selection",
    kinds={"pytorch", "duckdb"},
    owners=[OWNER],
    tags={"stage": "selection"},
    code_version="1",
)
def student_scores(context: dg.AssetExecutionContext, storage: StorageResource, student: StudentResource) -> dg.MaterializeResult:  # type: ignore[valid-type]
    """The student's scores of every variant of each record in the shard: original,
    instruction (phase 1's pair), response (phase 2 on the original; needs reflected_responses
    with also_original) and both (phase 2 on phase 1's pair). Four perplexities per variant
    and IFD = ppl(output | prompt) / ppl(output), r-IFD = ppl(instruction | reverse prompt) /
    ppl(instruction), as the official selection code defines them. A variant that cannot be
    scored has a status (too_long, empty_output, model_error...) and NULL scores. Scores are
    cached by model, template and text. Table: selection.student_scores."""
    dataset, shard = dataset_and_shard(context)
    db = storage.db()
    with user_errors_fail_the_step():
        scorer = student.scorer(storage, context.log.info)
        summary = score_shard(db, scorer, dataset, shard, context.log.info)
    distribution = score_distribution(db, dataset, shard)
    means = distribution.group_by("variant").agg(
        pl.len().alias("scored"), pl.col("ifd").mean().round(4).alias("mean_ifd"), pl.col("r_ifd").mean().round(4).alias("mean_r_ifd")
    ).sort("variant")
    metadata = {
        "dagster/row_count": summary.rows,
        "scored_now": summary.computed,
        "from_cache": summary.cached,
        "statuses": summary.statuses,
        "truncated": summary.truncated,
        "student": str(scorer.settings_key()["model"]),
        "template": scorer.template,
        "max_length": scorer.max_length,
        "dtype": scorer.dtype,
        "means": preview_table(means),
    }
    if not distribution.is_empty():
        with tempfile.TemporaryDirectory() as folder:
            chart = Path(folder) / "scores.png"
            _histogram(distribution, chart)
            metadata["distribution"] = png_markdown(chart, "IFD and r-IFD per variant")
    return dg.MaterializeResult(metadata=metadata)


class SelectionConfig(dg.Config):
    top_k: Optional[float] = None
    """Keep only this fraction of the selected records, those with the highest IFD (Cherry
    LLM's few-data variants), within each shard; null: every selected record."""


@dg.asset(
    partitions_def=RECORD_PARTITIONS,
    pool=step_pool(runs_model=False),
    deps=[student_scores],
    automation_condition=STALE_ONLY,
    group_name="selection",
    kinds={"duckdb"},
    owners=[OWNER],
    tags={"stage": "selection"},
    code_version="1",
)
def selective_dataset(context: dg.AssetExecutionContext, config: SelectionConfig, storage: StorageResource) -> dg.MaterializeResult:
    """The student-selected training set of one shard (V2): per record, the official rule
    keeps `both` (phase 2 on phase 1's pair) when phase 1 raised IFD and the pair is
    easier to reverse than phase 1's with IFD and r-IFD below 1, or `response` (phase 2 on
    the original) under the same test against the original, or nothing. Every decision and
    its reason: selection.decisions; the kept rows: selection.selective."""
    dataset, shard = dataset_and_shard(context)
    with user_errors_fail_the_step():
        if config.top_k is not None and not 0 < config.top_k <= 1:
            raise ScoringError(f"top_k={config.top_k}: expected a fraction above 0 and at most 1")
        summary = select_shard(storage.db(), dataset, shard, config.top_k)
    kept = summary.kept["both"] + summary.kept["response"] - summary.kept["cut_by_top_k"]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": kept,
            "records": summary.records,
            "kept_share": round(kept / summary.records, 4) if summary.records else 0.0,
            "kept_by_kind": summary.kept,
            "top_k": config.top_k if config.top_k is not None else "none",
            "preview": preview_table(summary.preview),
        }
    )
