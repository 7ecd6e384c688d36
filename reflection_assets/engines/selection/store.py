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
from reflection_assets.engines.store.storage import Database
from reflection_assets.errors import UserError
from reflection_assets.method.selection import OK, VARIANTS, Perplexities, VariantScore, decide, top_share

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
        con.execute(
            "SELECT variant, count(*) FROM selection.variants WHERE dataset = ? AND shard = ? GROUP BY variant",
            [dataset, shard],
        ).fetchall()
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
    rows = con.execute(
        "SELECT c.score_key, status, reason, loss_output_condition, loss_output_alone, "
        "loss_instruction_condition, loss_instruction_alone, truncated "
        "FROM selection.score_cache AS c JOIN wanted USING (score_key)"
    ).fetchall()
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
        con.execute("INSERT OR REPLACE INTO selection.score_cache BY NAME SELECT * FROM frame")


def score_shard(
    db: Database, scorer: StudentScorer, dataset: str, shard: int, log: Callable[[str], None] = print
) -> ScoreSummary:
    """Score every variant of the shard's records and store them (the shard replaced whole)."""
    with db.connect() as con:
        _check_variants(con, dataset, shard)
        variants = con.execute(
            "SELECT record_id, variant, instruction, input, output FROM selection.variants "
            "WHERE dataset = ? AND shard = ? ORDER BY record_id, variant",
            [dataset, shard],
        ).fetchall()
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
        con.execute("DELETE FROM selection.student_scores WHERE dataset = ? AND shard = ?", [dataset, shard])
        if rows:
            con.execute("INSERT INTO selection.student_scores BY NAME SELECT * FROM frame")
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
        scores = con.execute(
            "SELECT record_id, variant, ifd, r_ifd FROM selection.student_scores WHERE dataset = ? AND shard = ?",
            [dataset, shard],
        ).fetchall()
        records = con.execute(
            "SELECT count(*) FROM raw.records WHERE dataset = ? AND shard = ?", [dataset, shard]
        ).fetchone()[0]
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
        con.execute("DELETE FROM selection.decisions WHERE dataset = ? AND shard = ?", [dataset, shard])
        if rows:
            con.execute("INSERT INTO selection.decisions BY NAME SELECT * FROM decision_frame")
        con.execute("DELETE FROM selection.selective WHERE dataset = ? AND shard = ?", [dataset, shard])
        con.execute(
            """
            INSERT INTO selection.selective BY NAME
            SELECT v.dataset, v.shard, v.record_id, d.kept AS kind, v.instruction, v.input, v.output,
                   CASE d.kept WHEN 'both' THEN 'both' ELSE 'response_reflected' END AS provenance,
                   r.source_file, r.source_row, v.instruction_request_key, v.response_request_key,
                   v.fingerprint, s.ifd, s.r_ifd, d.reason
            FROM selection.decisions AS d
            JOIN selection.variants AS v ON v.dataset = d.dataset AND v.record_id = d.record_id AND v.variant = d.kept
            JOIN selection.student_scores AS s ON s.dataset = d.dataset AND s.record_id = d.record_id AND s.variant = d.kept
            JOIN raw.records AS r ON r.dataset = d.dataset AND r.record_id = d.record_id
            WHERE d.dataset = ? AND d.shard = ? AND NOT d.cut_by_top_k
            """,
            [dataset, shard],
        )
        preview = con.execute(
            "SELECT record_id, kind, round(ifd, 4) AS ifd, round(r_ifd, 4) AS r_ifd, instruction, output "
            "FROM selection.selective WHERE dataset = ? AND shard = ? ORDER BY record_id LIMIT 5",
            [dataset, shard],
        ).pl()
        kept_rows = con.execute(
            "SELECT count(*) FROM selection.selective WHERE dataset = ? AND shard = ?", [dataset, shard]
        ).fetchone()[0]
        mark_written(con, "selective_dataset", dataset, shard, kept_rows)
    counts = Counter(d.kept or "none" for d in decisions.values())
    kept = {"both": counts.get("both", 0), "response": counts.get("response", 0), "none": counts.get("none", 0),
            "cut_by_top_k": sum(r["cut_by_top_k"] for r in rows)}
    return SelectionSummary(records=len(decisions), kept=kept, preview=preview)


def score_distribution(db: Database, dataset: str, shard: int) -> pl.DataFrame:
    """variant, ifd, r_ifd of the shard's scored variants (status ok): for the histogram."""
    with db.connect() as con:
        return con.execute(
            "SELECT variant, ifd, r_ifd FROM selection.student_scores WHERE dataset = ? AND shard = ? AND status = 'ok'",
            [dataset, shard],
        ).pl()
