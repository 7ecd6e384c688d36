"""Selective recycling's tables, one shard at a time: the student's scores of every variant
(computed only where the cache has none), and the records the official rule keeps. Each
shard's rows are replaced in one transaction; scores already computed are kept in the
cache as they come, so an interrupted shard resumes where it stopped."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl

from reflection_assets.engines.selection.ifd import Pair, PairScore, StudentScorer
from reflection_assets.engines.data.shards import mark_written, require_upstream
from reflection_assets.engines.store.queries import queries
from reflection_assets.engines.store.storage import Database
from reflection_assets.errors import UserError
from reflection_assets.method.selection import OK, VARIANTS, Perplexities, VariantScore, decide, top_share

SQL = queries("selection_store")

# Pairs scored between two writes to the cache: what an interruption can lose at most.
CHUNK = 256


class SelectionInputError(UserError):
    """An upstream stage is missing for this shard. The message says what to run."""


@dataclass
class ScoreSummary:
    rows: int = 0
    computed: int = 0  # pairs scored now (the rest came from the cache)
    cached: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    truncated: int = 0


def _check_variants(con, dataset: str, shard: int) -> None:
    counts = dict(
        con.execute(SQL.variant_counts, [dataset, shard]).fetchall()
    )
    records = counts.get("original", 0)
    key = f"{dataset}|{shard:02d}"
    if records == 0:  # an empty shard: nothing to score once reflected_responses ran on it
        require_upstream(con, "student_scores", dataset, shard)
        return
    if counts.get("instruction", 0) < records:
        raise SelectionInputError(
            f"{records - counts.get('instruction', 0)} record(s) of {key} have no instruction reflection: "
            "materialize reflected_instructions for this shard first"
        )
    if counts.get("both", 0) < records:
        raise SelectionInputError(
            f"{records - counts.get('both', 0)} record(s) of {key} have no response reflection: "
            "materialize reflected_responses for this shard first"
        )
    if counts.get("response", 0) < records:
        raise SelectionInputError(
            f"reflected_responses of {key} has no reflection of the original pairs (variant 'original'), "
            "which selective recycling scores as the 'response' variant: materialize reflected_responses "
            "for this shard again with its config `also_original: true` (the default)"
        )


def _cached(con, keys: list[str]) -> dict[str, PairScore]:
    if not keys:
        return {}
    wanted = pl.DataFrame({"score_key": keys})  # noqa: F841 (read by DuckDB by its name)
    rows = con.execute(SQL.cached_scores).fetchall()
    found = {}
    for key, status, reason, *losses, truncated in rows:
        found[key] = PairScore(status, reason, Perplexities(*losses) if status == OK else None, truncated)
    return found


def _store_cache(db: Database, scored: dict[str, PairScore]) -> None:
    frame = pl.DataFrame(  # noqa: F841 (read by DuckDB by its name)
        {
            "score_key": list(scored),
            "status": [s.status for s in scored.values()],
            "reason": [s.reason for s in scored.values()],
            **{
                column: [getattr(s.losses, column) if s.losses else None for s in scored.values()]
                for column in ("loss_output_condition", "loss_output_alone", "loss_instruction_condition", "loss_instruction_alone")
            },
            "truncated": [s.truncated for s in scored.values()],
        },
        schema_overrides={c: pl.Float64 for c in ("loss_output_condition", "loss_output_alone", "loss_instruction_condition", "loss_instruction_alone")},
    )
    with db.transaction() as con:
        con.execute(SQL.store_cache)


def score_shard(
    db: Database, scorer: StudentScorer, dataset: str, shard: int, log: Callable[[str], None] = print
) -> ScoreSummary:
    """Score every variant of the shard's records and store them (the shard replaced whole)."""
    with db.connect() as con:
        _check_variants(con, dataset, shard)
        variants = con.execute(SQL.shard_variants, [dataset, shard]).fetchall()
    pairs = [Pair(*row[2:]) for row in variants]
    keys = [scorer.key(p) for p in pairs]
    with db.connect() as con:
        known = _cached(con, sorted(set(keys)))
    missing = {k: p for k, p in zip(keys, pairs, strict=True) if k not in known}
    summary = ScoreSummary(rows=len(variants), computed=len(missing), cached=len(set(keys)) - len(missing))
    log(f"{dataset}|{shard:02d}: {len(variants)} variants, {len(set(keys))} distinct pairs, {summary.cached} scored before, {len(missing)} to score")
    todo = list(missing.items())
    for start in range(0, len(todo), CHUNK):
        chunk = todo[start : start + CHUNK]
        scores = scorer.score([p for _, p in chunk])
        computed = {k: s for (k, _), s in zip(chunk, scores, strict=True)}
        _store_cache(db, computed)  # kept as they come: an interrupted shard resumes here
        known.update(computed)
        log(f"{dataset}|{shard:02d}: {min(start + CHUNK, len(todo))}/{len(todo)} pairs scored")
    settings = scorer.settings_key()
    rows = []
    for (record_id, variant, instruction, input_text, output), key in zip(variants, keys, strict=True):
        score = known[key]
        losses = score.losses
        row = {
            "dataset": dataset, "shard": shard, "record_id": record_id, "variant": variant,
            "instruction": instruction, "input": input_text, "output": output, "score_key": key,
            "student": str(settings["model"]), "template": scorer.template,
            "status": score.status, "reason": score.reason, "truncated": score.truncated,
        }
        for name in ("output_condition", "output_alone", "instruction_condition", "instruction_alone"):
            row[f"ppl_{name}"] = Perplexities.ppl(getattr(losses, f"loss_{name}")) if losses else None
        row.update(
            ifd=losses.ifd if losses else None, r_ifd=losses.r_ifd if losses else None,
            ifd_loss=losses.ifd_loss if losses else None, r_ifd_loss=losses.r_ifd_loss if losses else None,
        )
        rows.append(row)
    frame = pl.DataFrame(rows, infer_schema_length=None)  # noqa: F841 (read by DuckDB by its name)
    with db.transaction() as con:
        con.execute(SQL.delete_student_scores, [dataset, shard])
        if rows:
            con.execute(SQL.insert_student_scores)
        mark_written(con, "student_scores", dataset, shard, len(rows))
    summary.statuses = dict(Counter(known[k].status for k in keys))
    summary.truncated = sum(known[k].truncated for k in keys)
    return summary


@dataclass
class SelectionSummary:
    records: int = 0
    kept: dict[str, int] = field(default_factory=dict)  # both / response / none / cut_by_top_k
    preview: pl.DataFrame = field(default_factory=pl.DataFrame)


def select_shard(db: Database, dataset: str, shard: int, top_k: float | None = None) -> SelectionSummary:
    """Apply the official rule to the shard's scores; store every decision and the kept rows."""
    key = f"{dataset}|{shard:02d}"
    with db.connect() as con:
        scores = con.execute(SQL.shard_scores, [dataset, shard]).fetchall()
        records = con.execute(SQL.shard_record_count, [dataset, shard]).fetchone()[0]
        if records == 0:  # an empty shard: nothing to select once student_scores ran on it
            require_upstream(con, "selective_dataset", dataset, shard)
    by_record: dict[str, dict[str, VariantScore]] = {}
    for record_id, variant, ifd, r_ifd in scores:
        by_record.setdefault(record_id, {})[variant] = VariantScore(ifd, r_ifd)
    if len(by_record) < records:
        raise SelectionInputError(f"{key} has records without student scores: materialize student_scores for this shard first")
    decisions = {rid: decide(variants) for rid, variants in sorted(by_record.items())}
    selected = {rid: by_record[rid][d.kept].ifd for rid, d in decisions.items() if d.kept}
    kept_ids = top_share(selected, top_k) if top_k is not None else set(selected)  # type: ignore[arg-type]
    rows = []
    for rid, decision in decisions.items():
        row = {"dataset": dataset, "shard": shard, "record_id": rid, "kept": decision.kept, "reason": decision.reason,
               "cut_by_top_k": bool(decision.kept) and rid not in kept_ids, "top_k": top_k}
        for variant in VARIANTS:
            score = by_record[rid].get(variant)
            row[f"{variant}_ifd"] = score.ifd if score else None
            row[f"{variant}_r_ifd"] = score.r_ifd if score else None
        if row["cut_by_top_k"]:
            row["reason"] += f"; then left out by top_k={top_k} (IFD below the kept share)"
        rows.append(row)
    decision_frame = pl.DataFrame(rows, infer_schema_length=None)  # noqa: F841 (read by DuckDB by its name)
    with db.transaction() as con:
        con.execute(SQL.delete_decisions, [dataset, shard])
        if rows:
            con.execute(SQL.insert_decisions)
        con.execute(SQL.delete_selective, [dataset, shard])
        con.execute(SQL.insert_selective, [dataset, shard])
        preview = con.execute(SQL.selective_preview, [dataset, shard]).pl()
        kept_rows = con.execute(SQL.selective_count, [dataset, shard]).fetchone()[0]
        mark_written(con, "selective_dataset", dataset, shard, kept_rows)
    counts = Counter(d.kept or "none" for d in decisions.values())
    kept = {"both": counts.get("both", 0), "response": counts.get("response", 0), "none": counts.get("none", 0),
            "cut_by_top_k": sum(r["cut_by_top_k"] for r in rows)}
    return SelectionSummary(records=len(decisions), kept=kept, preview=preview)


def score_distribution(db: Database, dataset: str, shard: int) -> pl.DataFrame:
    """variant, ifd, r_ifd of the shard's scored variants (status ok): for the histogram."""
    with db.connect() as con:
        return con.execute(SQL.score_distribution, [dataset, shard]).pl()
