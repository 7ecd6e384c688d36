"""What a reflection stage still needs from the oracle, for a whole dataset at once: sent
ahead through the Batch API (`reflection run` in batch mode), or written to a file for a
server without one (`vllm run-batch` on a GPU host). `export` writes the requests as OpenAI
batch input lines and records them; `import` reads replies in the OpenAI batch output
layout or `vllm run-batch`'s, checks each custom id against the recorded requests and
stores the replies in the reply cache, so that materializing the stage afterwards sends
nothing."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reflection_assets.engines.oracle.batch_lines import BatchFileError, read_lines, request_line
from reflection_assets.engines.oracle.batch_store import BatchStore
from reflection_assets.engines.oracle.cache import OracleCache
from reflection_assets.engines.oracle.client import DeferringClient, OracleClient
from reflection_assets.engines.oracle.pricing import cost_usd, price_for
from reflection_assets.engines.oracle.replies import ErrorKind, OracleReply
from reflection_assets.engines.reflection.phases import reflect_instructions, reflect_responses
from reflection_assets.engines.reflection.store import raw_pairs, response_variants
from reflection_assets.engines.store.storage import Database
from reflection_assets.errors import UserError
from reflection_assets.method.requests import OracleRequest

EXPORT_STAGES = ("reflected_instructions", "reflected_responses")


def stage_requests(
    client: DeferringClient, db: Database, dataset: str, shards: Sequence[int], stage: str,
    repair: bool, also_original: bool = True,
) -> list[OracleRequest]:
    """The requests `stage` still needs for these shards: its own logic, run against the
    cache alone. A request whose answer depends on one not answered yet (phase 1's second
    call in the compact profile, a repair call) comes in a later export, once the first
    replies are imported."""
    if stage not in EXPORT_STAGES:
        raise UserError(f"stage {stage!r}: expected one of {', '.join(EXPORT_STAGES)}")
    for shard in shards:
        if stage == "reflected_instructions":
            reflect_instructions(client, raw_pairs(db, dataset, shard), repair)
        else:
            variants = response_variants(db, dataset, shard, also_original)
            reflect_responses(client, [p for pairs, _ in variants.values() for p in pairs], repair)
    return list(client.deferred.values())


def send_ahead(
    make_client: Callable[[type[OracleClient]], OracleClient], db: Database, dataset: str, shards: Sequence[int],
    stage: str, repair: bool, also_original: bool = True,
) -> int:
    """Batch mode for every shard of a stage at once: what the stage needs is submitted in
    batches and waited for, wave by wave (a follow-up is asked once the reply it follows is
    in), until the stage needs nothing new; its materializations then find every reply in
    the cache. One wait per wave for the whole dataset, instead of one per shard. Returns the requests asked; raises
    BatchesCancelled when `reflection batch cancel` stopped them."""
    asked: set[str] = set()
    while True:
        deferring = make_client(DeferringClient)
        needed = [r for r in stage_requests(deferring, db, dataset, shards, stage, repair, also_original) if r.key not in asked]
        if not needed:  # nothing new: what failed for good is left to the materialization
            return len(asked)
        asked.update(r.key for r in needed)
        client = make_client(OracleClient)
        for _ in client.complete_many(needed):
            pass
        if client.batches_cancelled:
            raise BatchesCancelled(
                f"the batches of {stage} were cancelled (`reflection batch cancel`): what they answered is "
                "stored; nothing more is launched"
            )


class BatchesCancelled(UserError):
    """A dataset's batches were cancelled while `reflection run` waited for them."""


def write_export(
    store: BatchStore, requests: Sequence[OracleRequest], out: Path, *, role: str, model: str,
    base_url: str | None, dataset: str, stage: str,
) -> None:
    """The lines, written to a temporary name and renamed (an interrupted export leaves no
    half-written file), and recorded as a `file` batch: what `import` checks against."""
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as fh:
            for request in requests:
                fh.write(request_line(request))
        os.replace(staging, out)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    if requests:
        store.create(
            kind="file", role=role, base_url=base_url, model=model, scope={"dataset": dataset, "stage": stage},
            requests=requests, attempt=1, status="exported", input_file_id=str(out.resolve()),
        )


@dataclass
class ImportReport:
    stored: int = 0  # new replies in the cache
    already: int = 0  # replies the cache had
    failed: int = 0  # lines that carried an error: recorded in oracle.failures, asked again later
    unknown: list[str] = field(default_factory=list)  # custom ids of no request we made

    def lines(self, files: Sequence[str]) -> list[str]:
        out = [
            f"{len(files)} file(s): {self.stored} replies stored, {self.already} already in the cache, "
            f"{self.failed} failed lines recorded (asked again on the next materialization)"
        ]
        if self.unknown:
            shown = ", ".join(self.unknown[:5]) + (f" and {len(self.unknown) - 5} more" if len(self.unknown) > 5 else "")
            out.append(f"{len(self.unknown)} line(s) with a custom_id no exported request has, not stored: {shown}")
        return out


def import_files(db: Database, paths: Sequence[Path], discount: float, price_overrides: tuple) -> ImportReport:
    """Every file is read whole before anything is stored: a malformed line fails the import
    with its file and line, and nothing of it is written."""
    results = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise BatchFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            raise BatchFileError(f"{path}: not UTF-8 text; expected JSON Lines of batch output") from None
        results += read_lines(text, str(path))
    store, cache = BatchStore(db), OracleCache(db)
    known = store.known_requests(r.custom_id for r in results)
    cached = cache.lookup(known)
    report = ImportReport()
    rows: list[tuple[OracleRequest, OracleReply]] = []
    seen: set[str] = set()
    for result in results:
        request = known.get(result.custom_id)
        if request is None:
            report.unknown.append(result.custom_id)
            continue
        if result.custom_id in cached or result.custom_id in seen:
            report.already += result.ok
            continue
        if result.ok:
            seen.add(result.custom_id)
            reply = result.reply
            price = price_for(request.sampling.backend, request.sampling.model, *price_overrides)
            cost = cost_usd(price, reply.prompt_tokens, reply.completion_tokens) * discount
            rows.append((request, OracleReply.paid(request, reply, cost_usd=cost, attempts=1, served_identity=request.served)))
            report.stored += 1
        else:
            kind = ErrorKind.TRANSIENT if result.transient else ErrorKind.PERMANENT
            rows.append((request, OracleReply(
                request_key=request.key, fingerprint=request.fingerprint, text=None, attempts=1,
                error_kind=kind, error=f"{result.message} (batch file)", status=result.status,
            )))
            report.failed += 1
    cache.write(rows)
    return report
