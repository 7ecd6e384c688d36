"""Benchmarking a dataset's adapters: each model answers every test prompt and is scored on
held-out answers (engines/benchmark/answers.py), the judge compares the recycled adapter with the
baseline in both orders (engines/benchmark/judge.py), outcomes and winning scores are tallied and
stored, and the latest run is reported.

Re-scoring never regenerates an answer or re-asks the judge: a fully cached run loads no
model and sends no request."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl

from reflection_assets.engines.benchmark.answers import (
    BenchmarkError,
    GenerationSettings,
    LoadedModel,
    Log,
    Model,
    answer_all,
    heldout_loss,
    heldout_references,
    models_for,
)
from reflection_assets.engines.benchmark.judge import REFERENCE, judge_all
from reflection_assets.engines.benchmark.served_answers import AnswersBackend
from reflection_assets.engines.oracle.client import OracleClient
from reflection_assets.engines.store.queries import queries
from reflection_assets.engines.store.storage import Database
from reflection_assets.engines.benchmark.testsets import TestPrompt
from reflection_assets.method.digests import json_digest
from reflection_assets.method.judging import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, Tally, bootstrap_intervals, sign_test
from reflection_assets.method.profiles import judge_version

SQL = queries("benchmark_run")
# The tables that hold a run's rows, cleared before the run is stored again.
RUN_TABLES = ("bench.runs", "bench.judgments", "bench.outcomes", "bench.scores", "bench.heldout_loss")


@dataclass
class BenchmarkResult:
    run_id: str
    scores: pl.DataFrame  # comparison, testset, category, win, tie, lose, unparsed, winning_score
    heldout: pl.DataFrame  # model, reference, examples, loss, perplexity
    prompts: int = 0
    generated: int = 0  # answers generated in this run (the rest were stored already)
    judge_requests: int = 0
    unparsed_replies: int = 0
    oracle_errors: int = 0
    judge_fingerprint: str = ""
    stats: dict[str, float | int] = field(default_factory=dict)
    resamples: int = BOOTSTRAP_RESAMPLES
    seed: int = BOOTSTRAP_SEED

    def headline(self, comparison: str = "recycled_vs_baseline") -> dict[str, object] | None:
        rows = self.scores.filter((pl.col("comparison") == comparison) & (pl.col("category") == "all"))
        if rows.is_empty():
            return None
        win, tie, lose, unparsed = (int(rows[c].sum()) for c in ("win", "tie", "lose", "unparsed"))
        tally = Tally(win, tie, lose, unparsed)
        intervals = bootstrap_intervals(tally, self.resamples, self.seed)
        return {
            "win": win, "tie": tie, "lose": lose, "unparsed": unparsed, "judged": tally.judged,
            "winning_score": tally.winning_score,
            "winning_score_ci": [intervals[0].low, intervals[0].high] if intervals else None,
            "win_rate": tally.win_rate,
            "win_rate_ci": [intervals[1].low, intervals[1].high] if intervals else None,
            "p_value": sign_test(win, lose),
        }


def comparisons_for(models: Sequence[Model], references: bool = False) -> list[tuple[str, str]]:
    """(model under test, the one it is compared with): recycled (and selective, when
    evaluated) vs baseline; each against the bare base model when it is evaluated too; and
    every adapter against the reference answers when the test sets carry some."""
    names = {m.name for m in models}
    tested = [name for name in ("recycled", "selective") if name in names]
    pairs = [(name, "baseline") for name in tested]
    if "base" in names:
        pairs += [(name, "base") for name in (*tested, "baseline")]
    if references:
        pairs += [(name, REFERENCE) for name in ("baseline", *tested)]
    return pairs


# ---------------------------------------------------------------- judging


def summarise(outcomes: pl.DataFrame, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> pl.DataFrame:
    """Counts, winning score and win rate with their 95% intervals, and the sign test's
    p-value, per comparison, test set and category ('all': the set)."""
    groups = []
    for keys, frame in outcomes.group_by(["comparison", "testset", "category"], maintain_order=True):
        groups.append((*keys, frame["outcome"].to_list()))
    for keys, frame in outcomes.group_by(["comparison", "testset"], maintain_order=True):
        groups.append((*keys, "all", frame["outcome"].to_list()))
    rows = []
    for comparison, testset, category, values in groups:
        tally = Tally.of(values)
        intervals = bootstrap_intervals(tally, resamples, seed)
        score_ci, rate_ci = intervals if intervals else (None, None)
        rows.append(
            {
                "comparison": comparison,
                "testset": testset,
                "category": category,
                "win": tally.win,
                "tie": tally.tie,
                "lose": tally.lose,
                "unparsed": tally.unparsed,
                "winning_score": tally.winning_score,
                "winning_score_low": score_ci and score_ci.low,
                "winning_score_high": score_ci and score_ci.high,
                "win_rate": tally.win_rate,
                "win_rate_low": rate_ci and rate_ci.low,
                "win_rate_high": rate_ci and rate_ci.high,
                "p_value": sign_test(tally.win, tally.lose),
            }
        )
    schema = {
        "comparison": pl.String, "testset": pl.String, "category": pl.String, "win": pl.Int64,
        "tie": pl.Int64, "lose": pl.Int64, "unparsed": pl.Int64, "winning_score": pl.Float64,
        "winning_score_low": pl.Float64, "winning_score_high": pl.Float64, "win_rate": pl.Float64,
        "win_rate_low": pl.Float64, "win_rate_high": pl.Float64, "p_value": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema).sort(
        ["comparison", "testset", pl.col("category") != "all", "category"]
    )


# ---------------------------------------------------------------- the whole run


def _digest(payload: object) -> str:
    return json_digest(payload, ascii=False)


def run_benchmark(
    db: Database,
    artifacts: str | Path,
    dataset: str,
    testsets: dict[str, list[TestPrompt]],
    judge: OracleClient,
    generation: GenerationSettings,
    compare_base: bool = False,
    loss_max_length: int = 512,
    log: Log = print,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    answers_backend: AnswersBackend | None = None,
) -> BenchmarkResult:
    from reflection_assets.engines.oracle.settings import resolve_dtype

    if generation.max_new_tokens < 1 or generation.batch_size < 1:
        raise BenchmarkError("max_new_tokens and batch_size must be 1 or more")
    if not testsets or not any(testsets.values()):
        raise BenchmarkError("no test prompts: name at least one test set with prompts in it")
    if resamples < 100:
        raise BenchmarkError(f"bootstrap_resamples={resamples}: expected 100 or more (2,000 by default)")
    models = models_for(db, dataset, compare_base)
    everything = [p for prompts in testsets.values() for p in prompts]
    references = {p.prompt_hash: p.reference for p in everything if p.reference}
    comparisons = comparisons_for(models, bool(references))
    dtype = resolve_dtype(generation.dtype)
    judge_fingerprint = judge.fingerprint(judge_version(judge.settings.prompt_profile))
    backend = answers_backend or AnswersBackend()
    identity = [dataset, [m.key for m in models], judge_fingerprint, asdict(generation), dtype,
                {name: [asdict(p) for p in prompts] for name, prompts in testsets.items()}]
    run_id = _digest(identity + [backend.key_part()] if backend.served else identity)
    answers: dict[str, dict[str, str]] = {REFERENCE: references} if references else {}
    generated = 0
    holdout = max(m.holdout_fraction for m in models)
    heldout_pairs = heldout_references(db, dataset, models, holdout)
    losses: list[dict[str, object]] = []
    for model in models:
        loaded = LoadedModel(model, artifacts, log)
        # The loss first, on the float32 weights (bfloat16 autocast, as in training); then
        # generation, which may turn the weights to bfloat16. With answers from a server the
        # models are not loaded here at all, and the loss (which needs them) is not measured.
        if not backend.served:
            losses += heldout_loss(db, loaded, heldout_pairs, loss_max_length, "auto")
        answers[model.name], made = answer_all(db, loaded, everything, generation, dtype, log, backend)
        generated += made
        del loaded  # one model in memory at a time
    if backend.served:
        log("held-out loss not measured: the answers came from a server (it needs the models here)")
    log(f"judging {len(comparisons)} comparison(s) on {len(everything)} prompts, both orders"
        + (f" ({len(references)} with a reference answer)" if references else ""))
    judgments, outcomes, counts = judge_all(judge, testsets, answers, comparisons)
    if counts["oracle_errors"] == len(judgments):
        first = next(j["reply_head"] for j in judgments)
        raise BenchmarkError(
            f"every judge call failed (first: {first}); the generated answers are stored and will "
            "be reused when the judge works"
        )
    outcome_frame = pl.DataFrame(outcomes)
    scores = summarise(outcome_frame, resamples, seed)
    heldout = pl.DataFrame(
        losses,
        schema={"model": pl.String, "reference": pl.String, "examples": pl.Int64, "loss": pl.Float64,
                "perplexity": pl.Float64, "loss_key": pl.String},
    )
    _store(db, run_id, dataset, models, judge, judge_fingerprint, generation, dtype, testsets,
           judgments, outcome_frame, scores, heldout)
    return BenchmarkResult(
        run_id=run_id,
        scores=scores,
        heldout=heldout.drop("loss_key"),
        prompts=len(everything),
        generated=generated,
        judge_requests=counts["requests"],
        unparsed_replies=counts["unparsed"],
        oracle_errors=counts["oracle_errors"],
        judge_fingerprint=judge_fingerprint,
        stats=judge.stats.as_metadata(),
        resamples=resamples,
        seed=seed,
    )


def _store(db, run_id, dataset, models, judge, judge_fingerprint, generation, dtype, testsets,
           judgments, outcome_frame, scores, heldout) -> None:
    by_name = {m.name: m for m in models}
    judgment_frame = pl.DataFrame(judgments).with_columns(  # noqa: F841 (read by DuckDB by name)
        pl.lit(run_id).alias("run_id")
    )
    outcome_rows = outcome_frame.with_columns(pl.lit(run_id).alias("run_id"))  # noqa: F841
    score_rows = scores.with_columns(pl.lit(run_id).alias("run_id"))  # noqa: F841
    loss_rows = heldout.with_columns(pl.lit(run_id).alias("run_id"))  # noqa: F841
    run_row = [
        run_id, dataset, by_name["baseline"].key, by_name["recycled"].key,
        by_name["selective"].key if "selective" in by_name else None, by_name["baseline"].base_model,
        judge_fingerprint, judge.settings.model, json.dumps({**asdict(generation), "dtype": dtype}),
        json.dumps({name: _digest([asdict(p) for p in prompts]) for name, prompts in testsets.items()}),
    ]
    with db.transaction() as con:
        for table in RUN_TABLES:
            con.execute(SQL.format("delete_run_rows", table=table), [run_id])
        con.execute(SQL.insert_run, run_row)
        con.execute(SQL.insert_judgments)
        con.execute(SQL.insert_outcomes)
        con.execute(SQL.insert_scores)
        con.execute(SQL.insert_heldout_loss)


PLOTTED = ("recycled_vs_baseline", "selective_vs_baseline")


def plot_scores(scores: pl.DataFrame, path: Path) -> None:
    """Left: stacked win / tie / lose / unparsed bars, one per comparison with the baseline
    (and with the reference answers) and test set. Right: each one's winning score with its
    95% interval as an error bar, beside the line at 1 (no difference)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = scores.filter(
        (pl.col("comparison").is_in(PLOTTED) | pl.col("comparison").str.ends_with(f"_vs_{REFERENCE}"))
        & (pl.col("category") == "all")
    )
    names = [c.replace("_vs_", " vs ") + f": {t}" for c, t in zip(rows["comparison"], rows["testset"], strict=True)]
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(9.6, 0.9 + 0.55 * max(1, len(names))), dpi=100,
                                   sharey=True, gridspec_kw={"width_ratios": [3, 2]})
    left = [0] * len(names)
    colors = {"win": "tab:green", "tie": "tab:gray", "lose": "tab:red", "unparsed": "tab:olive"}
    for column, color in colors.items():
        values = rows[column].to_list()
        ax.barh(names, values, left=left, color=color, label=column)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.set_xlabel("prompts")
    ax.set_xlim(0, max(left + [1]) * 1.05)
    ax.legend(loc="lower right", fontsize=8, ncols=4)
    for y, (score, low, high) in enumerate(zip(rows["winning_score"], rows["winning_score_low"],
                                               rows["winning_score_high"], strict=True)):
        if score is None:
            bars.text(1, y, "n/a", va="center", ha="center", fontsize=8)
            continue
        error = [[score - low], [high - score]] if low is not None else None
        bars.errorbar([score], [y], xerr=error, fmt="o", color="tab:blue", capsize=4)
        bars.text(score, y + 0.22, f"{score:.2f}", ha="center", fontsize=8)
    bars.axvline(1, color="black", linewidth=0.8, linestyle="--")
    bars.set_xlim(0, 2)
    bars.set_xlabel("winning score, 95% interval")
    fig.suptitle("against the baseline (and the reference answers)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def latest_scores(db: Database, dataset: str) -> dict[str, object] | None:
    """The latest benchmark run of a dataset: its adapters and judge, the score of every
    comparison and test set, and the held-out losses; None when there is none."""
    with db.connect() as con:
        run = con.execute(SQL.latest_run, [dataset]).fetchone()
        if run is None:
            return None
        scores = con.execute(SQL.run_scores, [run[0]]).fetchall()
        losses = con.execute(SQL.run_heldout_loss, [run[0]]).fetchall()
    score_keys = ("comparison", "testset", "win", "tie", "lose", "unparsed", "winning_score")

    def score(row: tuple) -> dict[str, object]:
        found = dict(zip(score_keys, row[:7], strict=True))
        low, high, rate, rate_low, rate_high, p_value = row[7:]
        found["winning_score_ci"] = [low, high] if low is not None else None
        found["p_value"] = p_value
        if found["comparison"].endswith(f"_vs_{REFERENCE}"):
            found["win_rate"] = rate
            found["win_rate_ci"] = [rate_low, rate_high] if rate_low is not None else None
        return found

    loss_keys = ("model", "reference", "examples", "loss", "perplexity")
    return {
        "dataset": dataset,
        "run_id": run[0],
        "created_at": run[5].isoformat(),
        "baseline_adapter": run[1],
        "recycled_adapter": run[2],
        "selective_adapter": run[6],
        "judge_model": run[3],
        "judge_fingerprint": run[4],
        "scores": [score(row) for row in scores],
        "heldout_loss": [dict(zip(loss_keys, row, strict=True)) for row in losses],
    }


def latest_report(db: Database, dataset: str) -> list[str]:
    """The latest benchmark run of a dataset as printable lines; empty when there is none."""
    latest = latest_scores(db, dataset)
    if latest is None:
        return []
    lines = [
        f"benchmark {latest['run_id']} of {dataset} ({latest['created_at'][:16].replace('T', ' ')}): recycled "
        f"adapter {latest['recycled_adapter']}"
        + (f" and selective adapter {latest['selective_adapter']}" if latest["selective_adapter"] else "")
        + f" vs baseline {latest['baseline_adapter']}, judged by "
        f"{latest['judge_model']} (fingerprint {latest['judge_fingerprint']})",
        f"  {'comparison':<24} {'test set':<16} {'win':>5} {'tie':>5} {'lose':>5} {'unparsed':>9}  "
        "winning score [95% interval]  sign test p",
    ]
    for row in latest["scores"]:  # type: ignore[union-attr]
        lines.append(
            f"  {row['comparison']:<24} {row['testset']:<16} {row['win']:>5} {row['tie']:>5} {row['lose']:>5} "
            f"{row['unparsed']:>9}  {_with_interval(row['winning_score'], row['winning_score_ci']):<28} "
            + ("n/a" if row["p_value"] is None else f"{row['p_value']:.3g}")
            + (f"   win rate {_with_interval(row['win_rate'], row['win_rate_ci'])}" if "win_rate" in row else "")
        )
    lines += [f"  {line}" for line in verdicts(latest["scores"])]  # type: ignore[arg-type]
    if latest["heldout_loss"]:
        lines.append("  held-out loss (mean response-token loss, lower is better):")
        for row in latest["heldout_loss"]:  # type: ignore[union-attr]
            lines.append(
                f"    {row['model']:<9} on {row['reference']:<9} answers ({row['examples']} examples): "
                f"loss {row['loss']:.4f}, perplexity {row['perplexity']:.2f}"
            )
    return lines


def _with_interval(value: float | None, interval: list[float] | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def significance(winning_score: float | None, interval: list[float] | None, judged: int) -> str:
    """What the interval says, in words: better, worse, or no significant difference."""
    if winning_score is None:
        return "nothing judged"
    if interval is None:
        return f"winning score {winning_score:.3f} (no interval: stored before intervals were)"
    if interval[0] > 1:
        return f"better: the 95% interval [{interval[0]:.3f}, {interval[1]:.3f}] lies above 1 on {judged} prompts"
    if interval[1] < 1:
        return f"worse: the 95% interval [{interval[0]:.3f}, {interval[1]:.3f}] lies below 1 on {judged} prompts"
    return f"no significant difference on {judged} prompts (the 95% interval [{interval[0]:.3f}, {interval[1]:.3f}] holds 1)"


def verdicts(scores: Sequence[dict[str, object]]) -> list[str]:
    """One line per comparison with the baseline, over all its test sets' rows: what the
    interval says."""
    lines = []
    for row in scores:
        if row["comparison"] in PLOTTED:
            judged = int(row["win"]) + int(row["tie"]) + int(row["lose"])
            lines.append(f"{row['comparison']} ({row['testset']}): "
                         + significance(row["winning_score"], row["winning_score_ci"], judged))  # type: ignore[arg-type]
    return lines
