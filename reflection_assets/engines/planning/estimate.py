"""What recycling a dataset will cost before it is paid: `reflection estimate`.

Each reflection stage's own logic runs against the reply cache alone (a DeferringClient, as
`reflection batch export` does), so every request it would send now is known exactly with
its prompt, and every reply the cache holds costs nothing and is not counted. What cannot
be known before replies exist is extrapolated from the records whose first reply the cache
holds (earlier runs, or `--pilot N` records sent now and cached, never paid again):

- the output tokens of each request still to send: the mean of the cached replies of its
  kind (a record's first call, or a follow-up: a repair call, the compact profile's answer);
- the follow-ups of records whose first reply is not in yet: the follow-ups per record seen;
- phase 2's `chain` pairs of records phase 1 has not answered yet: a new request for the
  share of records phase 1 replaced, else the original pair's request (paid once).

The range is a bootstrap over the records seen (5th to 95th percentile). Input tokens are
counted on the real prompts with the model's own tokenizer where one is at hand offline (the
embedded model, or a Hugging Face id in the local cache), else from the characters a token
that the cached replies of this model show, else at 4 characters a token; the result says
which. Time is at the pace the cache has seen: for an endpoint, its mean latency at the
configured concurrency (Little's law: concurrency / latency requests a second); for the
embedded model, whose throughput does not grow as its batch does, how fast its latest burst
of replies came. Either is bounded by the RPM and TPM buckets."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from reflection_assets.engines.oracle.client import DeferringClient, OracleClient
from reflection_assets.engines.oracle.pricing import price_for
from reflection_assets.engines.oracle.replies import OracleReply
from reflection_assets.engines.oracle.settings import OracleSettings
from reflection_assets.engines.reflection.phases import PhaseResult, reflect_instructions, reflect_responses
from reflection_assets.engines.store.queries import queries
from reflection_assets.engines.store.storage import Database
from reflection_assets.errors import UserError
from reflection_assets.method.profiles import profile
from reflection_assets.method.prompts import NEW_ANSWER, NEW_INSTRUCTION
from reflection_assets.method.records import Record
from reflection_assets.method.requests import OracleRequest

SQL = queries("planning_estimate")

ESTIMATE_STAGES = ("reflected_instructions", "reflected_responses")
JUDGE_STAGE = "benchmark_scores"  # its judge's requests
CHARS_PER_TOKEN = 4.0  # the fallback, as providers' own rule of thumb
BOOTSTRAP = 400


class EstimateError(UserError):
    """An estimate that cannot be made as asked: the message says why; nothing was sent."""


@dataclass(frozen=True)
class StageConfig:
    """The stages' settings that change what they ask (the same names as in `--config`)."""

    repair_instructions: bool
    repair_responses: bool
    also_original: bool = True


@dataclass
class _Call:
    request: OracleRequest
    reply: OracleReply | None  # cached; None: still to send


class _Observer(DeferringClient):
    """A DeferringClient that keeps every request it was asked for, with its cached reply."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: dict[str, _Call] = {}

    def complete_many(self, requests: Iterable[OracleRequest]) -> Iterator[OracleReply]:
        unique = {r.key: r for r in requests}
        for reply in super().complete_many(unique.values()):
            self.calls[reply.request_key] = _Call(unique[reply.request_key], reply if reply.cached else None)
            yield reply


@dataclass
class _Unit:
    """One record (phase 1) or record and variant (phase 2): the keys of its calls, first
    call first."""

    keys: list[str]


class TokenCounter:
    """Input tokens of a request: the model's own tokenizer where one is at hand offline,
    else characters a token as this model's cached replies show, else 4."""

    def __init__(self, settings: OracleSettings, artifacts, samples: Sequence[tuple[int, int]]):
        self.tokenizer = _offline_tokenizer(settings, artifacts)
        chars = sum(c for c, _ in samples)
        tokens = sum(t for _, t in samples)
        if self.tokenizer is not None:
            self.basis = f"counted with the tokenizer of {settings.model}"
            self.chars_per_token = CHARS_PER_TOKEN
        elif samples and tokens:
            self.chars_per_token = chars / tokens
            self.basis = f"estimated at {self.chars_per_token:.2f} characters a token, as {len(samples)} cached replies of {settings.model} show"
        else:
            self.chars_per_token = CHARS_PER_TOKEN
            self.basis = f"estimated at {CHARS_PER_TOKEN:g} characters a token (no tokenizer at hand, no cached reply of {settings.model})"

    def count(self, request: OracleRequest) -> int:
        if self.tokenizer is None:
            return math.ceil(request.prompt_chars() / self.chars_per_token)
        text = self.tokenizer.apply_chat_template(
            request.chat_messages(), tokenize=False,
            add_generation_prompt=not request.continues, continue_final_message=request.continues,
        )
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def _offline_tokenizer(settings: OracleSettings, artifacts):
    """The embedded model's tokenizer for the local backend; for an endpoint, the model
    name's tokenizer when it is a Hugging Face id already in the local cache (a vLLM server
    serves such names); None otherwise. Never downloads."""
    try:
        if settings.kind.in_process:
            from reflection_assets.engines.models.loading import load_tokenizer

            tokenizer = load_tokenizer(settings.model, artifacts)
        else:
            if "/" not in settings.model:
                return None
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(settings.model, local_files_only=True)
    except Exception:  # no such folder or cached id: estimate instead
        return None
    return tokenizer if getattr(tokenizer, "chat_template", None) else None


@dataclass
class StageEstimate:
    stage: str
    requests: int  # still to send (the expected count, rounded)
    requests_range: tuple[int, int]
    cached: int  # answered by the cache: cost nothing
    known: int  # of `requests`, those whose prompt is known now
    input_tokens: int
    output_tokens: int
    output_tokens_range: tuple[int, int]
    cost_usd: float
    cost_usd_range: tuple[float, float]
    batch_cost_usd: float
    hours: float | None  # None: no reply of this oracle seen, so no pace
    input_basis: str
    output_basis: str
    sample_records: int  # records whose first reply the cache held: what the extrapolation rests on

    def as_json(self) -> dict[str, object]:
        return {
            "stage": self.stage,
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "batch_cost_usd": round(self.batch_cost_usd, 6),
            "hours": None if self.hours is None else round(self.hours, 4),
            "requests_range": list(self.requests_range),
            "output_tokens_range": list(self.output_tokens_range),
            "cost_usd_range": [round(c, 6) for c in self.cost_usd_range],
            "requests_cached": self.cached,
            "requests_known": self.known,
            "sample_records": self.sample_records,
            "input_tokens_basis": self.input_basis,
            "output_tokens_basis": self.output_basis,
        }


@dataclass
class Estimate:
    dataset: str
    records: int
    model: str
    mode: str
    stages: list[StageEstimate]
    pilot_records: int = 0
    pilot_requests: int = 0
    pilot_cost_usd: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def total_cost_usd(self) -> float:
        return sum(s.batch_cost_usd if self.mode == "batch" else s.cost_usd for s in self.stages)

    def as_json(self) -> dict[str, object]:
        return {
            "dataset": self.dataset,
            "records": self.records,
            "model": self.model,
            "mode": self.mode,
            "stages": [s.as_json() for s in self.stages],
            "total_cost_usd": round(self.total_cost_usd, 6),
            "total_online_cost_usd": round(sum(s.cost_usd for s in self.stages), 6),
            "total_batch_cost_usd": round(sum(s.batch_cost_usd for s in self.stages), 6),
            "pilot": {"records": self.pilot_records, "requests_sent": self.pilot_requests,
                      "cost_usd": round(self.pilot_cost_usd, 6)},
            "notes": self.notes,
        }


# -- the two phases as the stages run them ---------------------------------------------


def _known(result: PhaseResult, client: _Observer) -> bool:
    """Whether every call of a phase-1 result is answered, so its outcome is final."""
    keys = [k for k in (result.request_key, result.answer_key, result.repair_key) if k]
    return all(client.calls[k].reply is not None for k in keys if k in client.calls)


def chain_pair(raw: Record, result: PhaseResult) -> Record:
    """The pair phase 2's `chain` variant reflects, as reflection_store.instruction_reflected_pairs
    reads it back: phase 1's new pair (its input folded in) where it replaced, else the raw one."""
    if result.ok:
        return Record(raw.record_id, result.sections[NEW_INSTRUCTION], "", result.sections[NEW_ANSWER])
    return raw


def _units(results: Sequence[PhaseResult]) -> list[_Unit]:
    """One unit per distinct first call: where phase 1 kept a pair, its chain and original
    variants are the same request, paid once."""
    units: dict[str, _Unit] = {}
    for r in results:
        units.setdefault(r.request_key, _Unit([k for k in (r.request_key, r.answer_key, r.repair_key) if k]))
    return list(units.values())


@dataclass
class _Observed:
    """What one stage's logic asked of the cache."""

    calls: dict[str, _Call]
    units: list[_Unit]
    unknown_chains: int = 0  # phase 2: records whose chain pair waits on phase 1
    replaced: list[bool] = field(default_factory=list)  # phase 1 outcomes known: replaced or not
    also_original: bool = True  # phase 2 asks the original pairs anyway
    max_follow: int = 0  # follow-up calls a record can need at most (a repair, the compact answer)
    stand_in: list[_Call] = field(default_factory=list)  # requests whose size stands for unknown ones


def observe_stages(
    make_observer: Callable[[], _Observer], pairs: Sequence[Record], stages: Sequence[str], config: StageConfig,
) -> dict[str, _Observed]:
    phase1_client = make_observer()
    phase1 = reflect_instructions(phase1_client, pairs, config.repair_instructions)
    known = [_known(r, phase1_client) for r in phase1]
    out: dict[str, _Observed] = {}
    chosen = profile(phase1_client.settings.prompt_profile)
    if "reflected_instructions" in stages:
        follow = chosen.instructions.follow_ups(config.repair_instructions)  # later steps, repairs
        out["reflected_instructions"] = _Observed(phase1_client.calls, _units(phase1), max_follow=follow)
    if "reflected_responses" in stages:
        chains = [chain_pair(raw, r) for raw, r, k in zip(pairs, phase1, known, strict=True) if k]
        asked = chains + (list(pairs) if config.also_original else [])
        client = make_observer()
        results = reflect_responses(client, asked, config.repair_responses)
        observed = _Observed(client.calls, _units(results), max_follow=chosen.responses.follow_ups(config.repair_responses))
        observed.unknown_chains = sum(not k for k in known)
        observed.replaced = [r.ok for r, k in zip(phase1, known, strict=True) if k]
        observed.also_original = config.also_original
        if not config.also_original and observed.unknown_chains:
            # the prompts of the original pairs waiting on phase 1 stand for their size
            stand_in = make_observer()
            reflect_responses(stand_in, [raw for raw, k in zip(pairs, known, strict=True) if not k], False)
            observed.stand_in = list(stand_in.calls.values())
        out["reflected_responses"] = observed
    return out


# -- the arithmetic -------------------------------------------------------------------


@dataclass(frozen=True)
class Pricing:
    price: tuple[float, float]  # $ per 1M input, output tokens
    discount: float  # the batch price's share
    rpm: int | None
    tpm: int | None
    max_tokens: int


def _percentile(values, q):
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q))


def estimate_stage(stage: str, observed: _Observed, counter: TokenCounter, pricing: Pricing, pace_s: float | None,
                   seed: int = 0, prior: Sequence[tuple[int, int, int, int]] = ()) -> StageEstimate:
    """One stage's estimate from what its logic asked of the cache. `prior`: records this
    oracle answered for the same stage elsewhere (first call's output tokens, follow-ups,
    their cached output tokens and count), standing in when none of this stage's first
    calls is cached."""
    import numpy as np

    calls, units = observed.calls, observed.units
    first_keys = {u.keys[0] for u in units}
    to_send = {k: c for k, c in calls.items() if c.reply is None}
    tokens_in = {k: (c.reply.prompt_tokens if c.reply else counter.count(c.request)) for k, c in calls.items()}
    seen_units = [u for u in units if calls[u.keys[0]].reply is not None]
    unseen_units = len(units) - len(seen_units)

    # Per record seen: its first reply's output, its follow-ups, and their cached outputs.
    first_out = np.array([calls[u.keys[0]].reply.completion_tokens for u in seen_units], dtype=float)
    follow_n = np.array([len(u.keys) - 1 for u in seen_units], dtype=float)
    follow_out_sum = np.array(
        [sum(calls[k].reply.completion_tokens for k in u.keys[1:] if calls[k].reply) for u in seen_units], dtype=float)
    follow_out_n = np.array([sum(1 for k in u.keys[1:] if calls[k].reply) for u in seen_units], dtype=float)
    from_prior = not seen_units and len(prior) > 0
    if from_prior:  # this oracle's records of other datasets (or runs) stand in
        first_out, follow_n, follow_out_sum, follow_out_n = (np.array(column, dtype=float) for column in zip(*prior))
    sampled = len(first_out)
    follow_in = [tokens_in[k] for u in units for k in u.keys[1:]]
    first_in = [tokens_in[k] for k in first_keys] + [counter.count(c.request) for c in observed.stand_in]
    mean_first_in = float(np.mean(first_in)) if first_in else 0.0
    mean_follow_in = float(np.mean(follow_in)) if follow_in else mean_first_in
    replaced = np.array(observed.replaced, dtype=float)

    limits = {k: c.request.sampling.max_tokens for k, c in calls.items()}
    limit_first = float(np.mean([limits[k] for k in first_keys])) if first_keys else float(pricing.max_tokens)
    follow_limits = [limits[k] for u in units for k in u.keys[1:]]
    limit_follow = float(np.mean(follow_limits)) if follow_limits else limit_first
    send_first = sum(1 for k in to_send if k in first_keys)
    send_follow = len(to_send) - send_first
    known_in = sum(tokens_in[k] for k in to_send)

    def totals(idx, replaced_idx):
        """(requests, input tokens, output tokens, first-wave requests) for one resample."""
        if len(idx):
            out_first = first_out[idx].mean()
            follows = follow_n[idx].mean()
            cached_follow = follow_out_n[idx].sum()
            out_follow = follow_out_sum[idx].sum() / cached_follow if cached_follow else out_first
        else:  # no reply of this stage cached: bounded by the reply limits and every follow-up asked
            out_first, out_follow, follows = limit_first, limit_follow, float(observed.max_follow)
        share = replaced[replaced_idx].mean() if len(replaced_idx) else 1.0
        # phase 2: a chain pair phase 1 will replace is a new request; one it keeps is the
        # original's (asked anyway with also_original, else asked for the chain)
        new_units = observed.unknown_chains * (share if observed.also_original else 1.0)
        extra_follow = (unseen_units + new_units) * follows
        requests = len(to_send) + new_units + extra_follow
        inputs = known_in + new_units * mean_first_in + extra_follow * mean_follow_in
        outputs = (send_first + new_units) * out_first + (send_follow + extra_follow) * out_follow
        return requests, inputs, outputs, send_first + new_units

    everyone = np.arange(sampled)
    all_replaced = np.arange(len(replaced))
    requests, inputs, outputs, first_wave = totals(everyone, all_replaced)
    rng = np.random.default_rng(seed)
    draws = [
        totals(rng.integers(0, sampled, sampled), rng.integers(0, len(replaced), len(replaced)))
        for _ in range(BOOTSTRAP if sampled > 1 else 0)
    ]
    cost = lambda i, o: (i * pricing.price[0] + o * pricing.price[1]) / 1_000_000  # noqa: E731
    if draws:
        req_lo, req_hi = (_percentile([d[0] for d in draws], q) for q in (5, 95))
        out_lo, out_hi = (_percentile([d[2] for d in draws], q) for q in (5, 95))
        costs = [cost(d[1], d[2]) for d in draws]
        cost_lo, cost_hi = _percentile(costs, 5), _percentile(costs, 95)
    elif sampled:  # one record seen: no spread to draw from
        req_lo = req_hi = requests
        out_lo = out_hi = outputs
        cost_lo = cost_hi = cost(inputs, outputs)
    else:  # nothing seen: anything from an empty reply and no follow-up to the limits
        req_lo, req_hi = len(to_send) + (0 if observed.also_original else observed.unknown_chains), requests
        out_lo, out_hi = 0.0, outputs
        cost_lo, cost_hi = cost(inputs, 0.0), cost(inputs, outputs)
    if from_prior:
        output_basis = f"the mean of {sampled} record(s) this oracle answered for the same stage elsewhere (the cache)"
    elif seen_units:
        output_basis = f"the mean of {len(seen_units)} record(s) whose replies the cache holds for this oracle"
    else:
        output_basis = (f"no reply of this stage cached for this oracle: each reply at its limit ({limit_first:.0f} tokens a first "
                         "call), every follow-up asked (an upper bound; --pilot N measures it)")
    hours = None
    if pace_s is not None:
        per_request = (inputs + outputs) / requests if requests else 0.0
        seconds = sum(_wave_seconds(n, n * per_request, pace_s, pricing) for n in (first_wave, requests - first_wave))
        hours = seconds / 3600
    return StageEstimate(
        stage=stage,
        requests=round(requests),
        requests_range=(math.floor(req_lo), math.ceil(req_hi)),
        cached=sum(1 for c in calls.values() if c.reply is not None),
        known=len(to_send),
        input_tokens=round(inputs),
        output_tokens=round(outputs),
        output_tokens_range=(math.floor(out_lo), math.ceil(out_hi)),
        cost_usd=cost(inputs, outputs),
        cost_usd_range=(cost_lo, cost_hi),
        batch_cost_usd=cost(inputs, outputs) * pricing.discount,
        hours=hours,
        input_basis=counter.basis,
        output_basis=output_basis,
        sample_records=sampled,
    )


def _wave_seconds(requests: float, tokens: float, pace_s: float, pricing: Pricing) -> float:
    """A wave of requests sent together at `pace_s` seconds a request, no faster than the
    request and token buckets allow."""
    if requests <= 0:
        return 0.0
    seconds = requests * pace_s
    if pricing.rpm:
        seconds = max(seconds, requests / pricing.rpm * 60)
    if pricing.tpm and tokens:
        seconds = max(seconds, tokens / pricing.tpm * 60)
    return seconds


def check_request(dataset: str, records: int, stages: Sequence[str], pilot: int) -> None:
    """What makes an estimate impossible, before anything is sent (the served-model probe
    included)."""
    unknown = [s for s in stages if s not in (*ESTIMATE_STAGES, JUDGE_STAGE)]
    if unknown:
        raise EstimateError(f"stage {unknown[0]!r}: expected one of {', '.join((*ESTIMATE_STAGES, JUDGE_STAGE))}")
    if not records:
        raise EstimateError(
            f"dataset {dataset!r} has no raw records: materialize raw_dataset first "
            f"(`reflection run --dataset {dataset} --select raw_dataset`)"
        )
    if pilot < 0 or pilot > records:
        raise EstimateError(f"--pilot {pilot}: dataset {dataset!r} has {records} records; expected 1 to {records}")
    if pilot and not any(s in ESTIMATE_STAGES for s in stages):
        raise EstimateError("--pilot sends records through the reflection stages: name one of them with --stage")


def price_of(settings: OracleSettings, prefix: str = "REFLECTION_ORACLE_") -> tuple[float, float]:
    """$ per 1M input and output tokens; an error that names the variables when unknown."""
    price = price_for(settings.backend, settings.model, settings.price_input_per_mtok, settings.price_output_per_mtok)
    if price is None:
        raise EstimateError(
            f"no price known for model {settings.model!r}: set {prefix}PRICE_INPUT and {prefix}PRICE_OUTPUT "
            "($ per 1M tokens) to estimate its cost; nothing was sent"
        )
    return price


BURST_GAP_S = 300  # replies further apart than this belong to different runs


def observed_pace(db: Database, settings: OracleSettings, prompt_version: str) -> float | None:
    """Seconds a request at full use, from this oracle's replies to prompts of this version
    in the cache (None: none yet). An endpoint: its mean latency over the configured
    concurrency. The embedded model: the span of its latest burst of replies (from the start
    of the first to the end of the last) over their count, since its batch's throughput
    does not grow as the batch does (benchmarks/local_batch.py)."""
    with db.connect() as con:
        rows = con.execute(
            SQL.recent_replies,
            [settings.sampling.backend, settings.sampling.model, prompt_version],
        ).fetchall()
    if not rows:
        return None
    if not settings.kind.in_process:  # concurrent requests
        return sum(latency for _, latency in rows) / len(rows) / settings.max_concurrency
    burst = [rows[0]]
    for row in rows[1:]:
        if burst[-1][0] - row[0] > BURST_GAP_S:
            break
        burst.append(row)
    start = min(done - latency for done, latency in burst)
    return (max(done for done, _ in burst) - start) / len(burst)


# -- the command ----------------------------------------------------------------------


def dataset_pairs(db: Database, dataset: str) -> list[Record]:
    """Every raw pair of the dataset, shard by shard."""
    with db.connect() as con:
        rows = con.execute(SQL.dataset_pairs, [dataset]).fetchall()
    return [Record(*row) for row in rows]


def pilot_records(pairs: Sequence[Record], n: int) -> list[Record]:
    """N records spread over the dataset: the first N by record id (a content hash)."""
    return sorted(pairs, key=lambda p: p.record_id)[:n]


def run_pilot(client: OracleClient, pairs: Sequence[Record], stages: Sequence[str], config: StageConfig,
              make_observer: Callable[[], _Observer]) -> None:
    """Send the pilot records through the stages asked, as the stages would (the same
    requests, so the stages find them cached): phase 1, then phase 2 on the pairs it left
    and the originals. Phase 2 alone takes phase 1's results from the cache."""
    if "reflected_instructions" in stages:
        phase1 = reflect_instructions(client, pairs, config.repair_instructions)
        chains = [chain_pair(raw, r) for raw, r in zip(pairs, phase1, strict=True)]
    else:
        observer = make_observer()
        results = reflect_instructions(observer, pairs, config.repair_instructions)
        chains = [chain_pair(raw, r) for raw, r in zip(pairs, results, strict=True) if _known(r, observer)]
    if "reflected_responses" in stages:
        reflect_responses(client, chains + (list(pairs) if config.also_original else []), config.repair_responses)


@dataclass(frozen=True)
class Role:
    """The oracle or the judge: its settings and how to make a client of a given class."""

    settings: OracleSettings
    make_client: Callable[[type[OracleClient]], OracleClient] | None  # None: no stage of it asked


@dataclass(frozen=True)
class JudgePlan:
    """What benchmark_scores would judge: its test sets (already loaded and cut to
    max_prompts), its answers' length limit, and whether the base model is compared too."""

    testsets: dict
    max_new_tokens: int
    compare_base: bool = False


def observe_judge(make_observer: Callable[[], _Observer], db: Database, dataset: str, plan: JudgePlan) -> _Observed:
    """The judge's requests as benchmark_scores makes them: every comparison of the adapters
    the main job evaluates (recycled and selective against the baseline, against the base
    model with compare_base, and every adapter against the test sets' reference answers where
    they carry some), both orders. Answers already generated are used as they are;
    the others stand in at the mean length of the answers stored so far (else at the length
    limit, 4 characters a token), each distinct, so that nothing is taken as cached."""
    from reflection_assets.engines.benchmark.answers import Model
    from reflection_assets.engines.benchmark.run import REFERENCE, comparisons_for
    from reflection_assets.engines.benchmark.judge import judge_all

    names = ["baseline", "recycled", "selective"] + (["base"] if plan.compare_base else [])
    prompts = {p.prompt_hash: p for ps in plan.testsets.values() for p in ps}
    references = {h: p.reference for h, p in prompts.items() if p.reference}
    comparisons = comparisons_for([Model(n, n, "", "") for n in names], bool(references))
    with db.connect() as con:
        current = dict(con.execute(SQL.current_adapters, [dataset]).fetchall())
        stored = {}
        for name in names:
            key = current.get(name) if name != "base" else None
            if key:
                stored[name] = dict(con.execute(SQL.stored_answers, [key]).fetchall())
        mean_chars = con.execute(SQL.mean_answer_chars).fetchone()[0]
    width = round(mean_chars) if mean_chars else plan.max_new_tokens * 4
    answers = {
        name: {h: stored.get(name, {}).get(h) or f"[{name} {h}] ".ljust(width, "x") for h in prompts}
        for name in names
    }
    if references:  # the test sets' own answers, judged against every adapter
        answers[REFERENCE] = references
    client = make_observer()
    judge_all(client, plan.testsets, answers, comparisons)
    units = [_Unit([key]) for key in client.calls]
    return _Observed(client.calls, units)


# What this oracle answered before, by stage (sql/queries/planning_estimate.sql).
_PRIOR_SQL = {
    "reflected_instructions": SQL.prior_reflected_instructions,
    "reflected_responses": SQL.prior_reflected_responses,
    JUDGE_STAGE: SQL.prior_judgments,
}


def prior_records(db: Database, stage: str, settings: OracleSettings, prompt_version: str) -> list[tuple[int, int, int, int]]:
    """What this oracle (same backend, model and prompt version) answered for the stage, on
    any dataset: the stand-in for a dataset none of whose records it has seen."""
    with db.connect() as con:
        return con.execute(_PRIOR_SQL[stage], [settings.sampling.backend, settings.sampling.model, prompt_version]).fetchall()


def _pricing(settings: OracleSettings, price: tuple[float, float]) -> Pricing:
    return Pricing(price, settings.batch_discount, settings.rpm, settings.tpm, settings.max_tokens or 0)


def _counter(role: Role, artifacts, observed: Sequence[_Observed]) -> TokenCounter:
    samples = [
        (c.request.prompt_chars(), c.reply.prompt_tokens)
        for o in observed for c in o.calls.values() if c.reply is not None and c.reply.prompt_tokens
    ]
    return TokenCounter(role.settings, artifacts, samples)


def estimate(
    db: Database,
    artifacts,
    dataset: str,
    pairs: Sequence[Record],
    stages: Sequence[str],
    config: StageConfig,
    oracle: Role,
    judge: Role | None = None,
    judge_plan: JudgePlan | None = None,
    pilot: int = 0,
    log: Callable[[str], None] = lambda line: None,
) -> Estimate:
    """The estimate for `stages` of the dataset whose raw pairs are `pairs`; with `pilot`,
    that many records are sent through the reflection stages first (and cached)."""
    from reflection_assets.method.profiles import judge_version, reflection_version

    reflection = [s for s in stages if s in ESTIMATE_STAGES]
    check_request(dataset, len(pairs), stages, pilot)
    oracle_price = price_of(oracle.settings) if reflection else None
    judge_price = price_of(judge.settings, "REFLECTION_JUDGE_") if JUDGE_STAGE in stages and judge else None
    settings = oracle.settings
    make_observer = lambda: oracle.make_client(_Observer)  # noqa: E731
    result = Estimate(dataset, len(pairs), settings.model, settings.mode, [])
    if pilot and reflection:
        client = oracle.make_client(OracleClient)
        log(f"pilot: sending {pilot} record(s) through {', '.join(reflection)} (cached: never paid again)")
        run_pilot(client, pilot_records(pairs, pilot), reflection, config, make_observer)
        result.pilot_records, result.pilot_requests = pilot, client.stats.sent
        result.pilot_cost_usd = client.stats.cost_usd
        if client.stats.failed:
            result.notes.append(f"{client.stats.failed} pilot request(s) failed; they are counted as still to send")
    if settings.mode == "batch":
        result.notes.append("batch mode: each wave (first calls, then follow-ups) may take up to the Batch API's 24 h window; "
                            "hours are the online time")
    if reflection:
        observed = observe_stages(make_observer, pairs, reflection, config)
        counter = _counter(oracle, artifacts, list(observed.values()))
        assert oracle_price is not None
        pricing = _pricing(settings, oracle_price)
        pace = observed_pace(db, settings, reflection_version(settings.prompt_profile))
        if pace is None:
            result.notes.append("no reply of the oracle seen yet: hours unknown (--pilot N measures them)")
        version = reflection_version(settings.prompt_profile)
        for stage in reflection:
            result.stages.append(estimate_stage(
                stage, observed[stage], counter, pricing, pace, prior=prior_records(db, stage, settings, version)))
    if judge_price is not None:
        assert judge is not None and judge_plan is not None
        o = observe_judge(lambda: judge.make_client(_Observer), db, dataset, judge_plan)
        version = judge_version(judge.settings.prompt_profile)
        pace = observed_pace(db, judge.settings, version)
        if pace is None:
            result.notes.append("no reply of the judge seen yet: its hours are unknown")
        result.stages.append(estimate_stage(
            JUDGE_STAGE, o, _counter(judge, artifacts, [o]), _pricing(judge.settings, judge_price), pace,
            prior=prior_records(db, JUDGE_STAGE, judge.settings, version),
        ))
    return result
