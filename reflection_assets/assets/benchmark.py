"""benchmark_scores: did recycling help? The recycled adapter against the baseline, judged
pairwise in both orders on the test sets, and both adapters' loss on held-out answers."""

import tempfile
from pathlib import Path
from typing import Optional

import dagster as dg
import polars as pl

from reflection_assets.assets.adapters import baseline_adapter, recycled_adapter, selective_adapter
from reflection_assets.assets.automation import STALE_ONLY
from reflection_assets.assets.failures import user_errors_fail_the_step
from reflection_assets.assets.metadata import preview_table, png_markdown
from reflection_assets.assets.oracles import judge as judge_source
from reflection_assets.assets.oracles import llm_client
from reflection_assets.assets.partitions import DATASETS
from reflection_assets.assets.resources import OWNER, JudgeResource, StorageResource, step_pool
from reflection_assets.engines.benchmark.answers import GenerationSettings
from reflection_assets.engines.benchmark.run import REFERENCE, plot_scores, run_benchmark, significance
from reflection_assets.engines.reflection.store import judge_served_by
from reflection_assets.engines.benchmark.served_answers import AnswersBackend
from reflection_assets.engines.benchmark.testsets import BUNDLED_TESTSET, TestsetError, TestsetRegistry

CHECK = "recycled_beats_baseline"


class BenchmarkConfig(dg.Config):
    """What to evaluate on and how. The defaults are the main job's: the bundled prompts and
    short answers from the embedded student."""

    testsets: list[str] = [BUNDLED_TESTSET]
    """Test set names: `bundled`, or names registered with `reflection testsets add`."""
    max_prompts: Optional[int] = None
    """Evaluate only the first N prompts of each test set (a quick look); null: all."""
    max_new_tokens: int = 96
    """The answers' length limit; the paper's students answer in up to 2,048 tokens."""
    batch_size: int = 16
    dtype: str = "auto"
    """Generation precision: auto (bfloat16 where the hardware has it), float32 or bfloat16."""
    compare_base: bool = False
    """Also judge both adapters against the base model without adapter."""
    loss_max_length: int = 512
    bootstrap_resamples: int = 2000
    """Resamples of the paired bootstrap over prompts that gives each score its 95% interval."""
    bootstrap_seed: int = 0
    """The bootstrap's seed: the same outcomes always give the same interval."""


def _testsets(storage: StorageResource, config: BenchmarkConfig) -> dict:
    registry = TestsetRegistry(storage.db())
    if not config.testsets:
        raise TestsetError("no test sets configured: name at least one (`bundled` is always there)")
    loaded = {}
    for name in config.testsets:
        prompts = registry.load(name)
        loaded[name] = prompts[: config.max_prompts] if config.max_prompts else prompts
    return loaded


def _score_table(scores: pl.DataFrame) -> pl.DataFrame:
    return scores.with_columns(
        pl.col("winning_score", "winning_score_low", "winning_score_high", "win_rate", "win_rate_low",
               "win_rate_high").round(3),
        pl.col("p_value").round(4),
    )


@dg.asset(
    partitions_def=DATASETS,
    deps=[baseline_adapter, recycled_adapter, selective_adapter, judge_source],
    automation_condition=STALE_ONLY,
    pool=step_pool(runs_model=True),
    group_name="evaluation",
    kinds={"pytorch", "duckdb"},
    owners=[OWNER],
    tags={"stage": "evaluation"},
    code_version="1",
    check_specs=[
        dg.AssetCheckSpec(
            CHECK,
            asset="benchmark_scores",
            description="The recycled adapter's winning score against the baseline is above 1 "
            "(a warning, not an error: on the embedded model it is not a quality claim).",
        )
    ],
)
def benchmark_scores(
    context: dg.AssetExecutionContext, config: BenchmarkConfig, storage: StorageResource, judge: JudgeResource
) -> dg.MaterializeResult:
    """Each adapter (baseline, recycled, and selective when there is one) answers every
    prompt of the test sets (greedy; answers kept in bench.answers by adapter and prompt,
    never generated twice); the judge rates each pair
    in both orders (METHOD.md section 4) and each prompt is a win, tie, lose or unparsed;
    winning score = (win - lose) / judged + 1 per test set and category, with its 95%
    paired-bootstrap interval and the sign test's p-value. Test sets with reference answers
    also judge each adapter against them (`*_vs_reference`, with the win rate). Also each
    adapter's loss on held-out reference answers. Tables: bench.runs, bench.judgments, bench.outcomes,
    bench.scores, bench.heldout_loss (DuckDB)."""
    dataset = context.partition_key
    with user_errors_fail_the_step():
        testsets = _testsets(storage, config)
        answers_backend = AnswersBackend.from_env()
        client = llm_client(context, "judge", judge, storage)
        result = run_benchmark(
            storage.db(),
            storage.artifacts_path(),
            dataset,
            testsets,
            client,
            GenerationSettings(config.max_new_tokens, config.batch_size, config.dtype),
            compare_base=config.compare_base,
            loss_max_length=config.loss_max_length,
            log=context.log.info,
            resamples=config.bootstrap_resamples,
            seed=config.bootstrap_seed,
            answers_backend=answers_backend,
        )
    headline = result.headline()
    score = headline["winning_score"] if headline else None
    reading = significance(score, headline["winning_score_ci"], headline["judged"]) if headline else "nothing judged"
    selective = result.headline("selective_vs_baseline")
    metadata = {
        "dagster/row_count": result.scores.height,
        "benchmark_run": result.run_id,
        "winning_score": dg.MetadataValue.float(score) if score is not None else "n/a (nothing judged)",
        "winning_score_ci": dg.MetadataValue.json(headline["winning_score_ci"]) if score is not None else "n/a",
        "p_value": dg.MetadataValue.float(headline["p_value"]) if headline else "n/a",
        "significance": reading,
        "win_tie_lose_unparsed": " / ".join(str(headline[k]) for k in ("win", "tie", "lose", "unparsed"))
        if headline
        else "n/a",
        "unparsed": headline["unparsed"] if headline else 0,
        "selective_winning_score": (
            "n/a (no selective adapter)" if selective is None
            else dg.MetadataValue.float(selective["winning_score"]) if selective["winning_score"] is not None
            else "n/a (nothing judged)"
        ),
        "unparsed_replies": result.unparsed_replies,
        "judge_errors": result.oracle_errors,
        "judge_fingerprint": result.judge_fingerprint,
        "judge_model": client.settings.model,
        "judge_served_by": judge_served_by(storage.db(), result.run_id),
        "prompts": result.prompts,
        "answers_generated": result.generated,
        "answers_backend": answers_backend.kind,
        "judge_requests": result.judge_requests,
        "scores": preview_table(_score_table(result.scores.filter(pl.col("category") == "all"))),
        "scores_by_category": preview_table(_score_table(result.scores.filter(pl.col("category") != "all"))),
        "heldout_loss": preview_table(result.heldout.with_columns(pl.col("loss", "perplexity").round(4))),
        **result.stats,
    }
    with tempfile.TemporaryDirectory() as folder:
        chart = Path(folder) / "scores.png"
        plot_scores(result.scores, chart)
        metadata["win_tie_lose"] = png_markdown(chart, "win, tie and lose against the baseline per test set")
    for reference in (f"{name}_vs_{REFERENCE}" for name in ("baseline", "recycled", "selective")):
        against = result.headline(reference)
        if against is not None and against["win_rate"] is not None:
            low, high = against["win_rate_ci"]
            metadata[f"{reference}_win_rate"] = f"{against['win_rate']:.3f} [{low:.3f}, {high:.3f}]"
    # Passes only when the interval's lower end is above 1: a score above 1 by chance is not
    # recycling helping.
    check = dg.AssetCheckResult(
        check_name=CHECK,
        passed=score is not None and headline["winning_score_ci"][0] > 1,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "winning_score": score if score is not None else -1.0,
            "winning_score_ci": dg.MetadataValue.json(headline["winning_score_ci"] if score is not None else None),
            "p_value": headline["p_value"] if headline else 1.0,
            "significance": reading,
            "judge_model": client.settings.model,
        },
        description=reading,
    )
    return dg.MaterializeResult(
        metadata=metadata, check_results=[check], data_version=dg.DataVersion(result.run_id)
    )
