"""Oracle building blocks: request keys, fingerprints, settings, prices, limits."""

import asyncio
import random
import time
from email.utils import formatdate

import pytest

from reflection_assets.engines.oracle.backends import redact
from reflection_assets.engines.oracle.limits import (
    AdaptiveConcurrency,
    TokenBucket,
    backoff_delay,
    parse_retry_after,
)
from reflection_assets.engines.oracle.pricing import cost_usd, price_for
from reflection_assets.engines.oracle.settings import JUDGE_PREFIX, OracleSettings, settings_from_env
from reflection_assets.method.requests import OracleRequest, SamplingSettings

BASE = SamplingSettings("openai", "gpt-4o-mini", 0.0, 256, None)


def req(content="hi", sampling=BASE, version="v1") -> OracleRequest:
    return OracleRequest((("system", "be precise"), ("user", content)), sampling, version)


def test_request_key_is_content_addressed():
    assert req().key == req().key and len(req().key) == 64
    variants = [
        req("other"),
        req(version="v2"),
        req(sampling=SamplingSettings("openai", "gpt-4o", 0.0, 256, None)),
        req(sampling=SamplingSettings("openai", "gpt-4o-mini", 0.7, 256, None)),
        req(sampling=SamplingSettings("openai", "gpt-4o-mini", 0.0, 512, None)),
        req(sampling=SamplingSettings("openai", "gpt-4o-mini", 0.0, 256, 7)),
        req(sampling=SamplingSettings("local", "gpt-4o-mini", 0.0, 256, None)),
    ]
    assert len({r.key for r in variants} | {req().key}) == len(variants) + 1


def test_fingerprint_covers_what_changes_replies_but_not_secrets():
    one = OracleSettings(backend="openai", model="m", api_key="sk-aaaaaaaaaa", base_url="http://a")
    two = OracleSettings(backend="openai", model="m", api_key="sk-bbbbbbbbbb", base_url="http://b")
    assert one.fingerprint("v1") == two.fingerprint("v1")
    assert one.fingerprint("v1") != one.fingerprint("v2")
    assert one.fingerprint("v1") != OracleSettings(backend="openai", model="n").fingerprint("v1")
    assert "sk-" not in repr(one) and "api_key" not in one.described()


def test_settings_from_env_with_judge_fallback():
    env = {
        "REFLECTION_ORACLE_BACKEND": "openai",
        "REFLECTION_ORACLE_MODEL": "gpt-4o-mini",
        "REFLECTION_ORACLE_MAX_CONCURRENCY": "64",
        "REFLECTION_ORACLE_RPM": "500",
        "REFLECTION_ORACLE_BUDGET_USD": "2.5",
        "OPENAI_API_KEY": "sk-fallback-key",
        "REFLECTION_JUDGE_MODEL": "gpt-4o",
        "REFLECTION_JUDGE_TEMPERATURE": "0.2",
    }
    oracle = settings_from_env(environ=env)
    assert (oracle.backend, oracle.model, oracle.max_concurrency, oracle.rpm, oracle.budget_usd) == (
        "openai", "gpt-4o-mini", 64, 500, 2.5,
    )
    assert oracle.api_key == "sk-fallback-key"
    judge = settings_from_env("REFLECTION_JUDGE_", environ=env)
    assert (judge.model, judge.temperature, judge.max_concurrency) == ("gpt-4o", 0.2, 64)
    own_key = settings_from_env(environ={**env, "REFLECTION_ORACLE_API_KEY": "sk-own-key"})
    assert own_key.api_key == "sk-own-key"
    assert settings_from_env(environ={}).backend == "local"
    assert settings_from_env(environ={}, max_tokens=12).max_tokens == 12


def test_bad_settings_are_clear_and_never_echo_the_key():
    with pytest.raises(ValueError, match="REFLECTION_ORACLE_MODEL"):
        settings_from_env(environ={"REFLECTION_ORACLE_BACKEND": "openai"})
    with pytest.raises(ValueError, match="REFLECTION_ORACLE_RPM='fast': expected a number"):
        settings_from_env(environ={"REFLECTION_ORACLE_RPM": "fast"})
    with pytest.raises(ValueError, match="expected one of local, openai"):
        settings_from_env(environ={"REFLECTION_ORACLE_BACKEND": "bard"})
    with pytest.raises(ValueError, match="max_concurrency=0"):
        OracleSettings(max_concurrency=0)


def test_prices():
    assert price_for("openai", "gpt-4o-mini", None, None) == (0.15, 0.60)
    assert price_for("openai", "gpt-4o-mini-2024-07-18", None, None) == (0.15, 0.60)
    assert price_for("openai", "gpt-4o-2024-08-06", None, None) == (2.50, 10.00)
    assert price_for("openai", "my-vllm-model", None, None) is None
    assert price_for("openai", "my-vllm-model", 1.0, 2.0) == (1.0, 2.0)
    assert price_for("local", "SmolLM2-135M-Instruct", None, None) == (0.0, 0.0)
    assert cost_usd((0.15, 0.60), 1_000_000, 500_000) == pytest.approx(0.45)
    assert cost_usd(None, 10, 10) == 0.0


def test_retry_after_parsing():
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.5") == 0.5
    assert 3 <= parse_retry_after(formatdate(time.time() + 5, usegmt=True)) <= 5
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_backoff_grows_with_jitter_and_honours_retry_after():
    for attempt in range(1, 8):
        assert 0 <= backoff_delay(attempt, None) <= min(60, 0.5 * 2**attempt)
    assert backoff_delay(1, 3.0) >= 3.0
    assert max(backoff_delay(10, None) for _ in range(200)) <= 60


async def _answers(limit: AdaptiveConcurrency, outcomes: list[str]) -> None:
    for outcome in outcomes:
        await limit.acquire()
        await limit.release(outcome)


def test_sustained_429s_halve_the_limit_and_successes_grow_it_back():
    async def scenario():
        limit = AdaptiveConcurrency(16, cooldown_s=0.0)
        await _answers(limit, ["throttled"] * 10)
        assert limit.limit == 8 and limit.decreases == 1
        await _answers(limit, ["throttled"] * 10)
        assert limit.limit == 4
        await _answers(limit, ["ok"])
        assert 4 < limit.limit < 5
        await _answers(limit, ["ok"] * 200)
        assert limit.limit == 16 and limit.decreases == 2

    asyncio.run(scenario())


def test_sporadic_429s_do_not_shrink_the_pool():
    async def scenario():
        limit = AdaptiveConcurrency(64, cooldown_s=0.0)
        await _answers(limit, (["ok"] * 9 + ["throttled"]) * 50)  # 10% of answers
        return limit

    limit = asyncio.run(scenario())
    assert limit.decreases == 0 and limit.limit == 64


def test_a_random_10_percent_of_429s_does_not_shrink_the_pool_and_40_percent_does():
    """429s at random, not every tenth answer: two among ten answers happen by chance at a
    10% rate (a quarter of the time) and must not read as a sustained 20%."""

    def decreases(rate: float) -> int:
        rng = random.Random(7)

        async def scenario():
            limit = AdaptiveConcurrency(64, cooldown_s=0.0)
            await _answers(limit, ["throttled" if rng.random() < rate else "ok" for _ in range(3000)])
            return limit.decreases

        return asyncio.run(scenario())

    assert decreases(0.10) == 0
    assert decreases(0.40) >= 3


def test_a_burst_of_429s_counts_once_within_the_cooldown():
    async def scenario():
        limit = AdaptiveConcurrency(32, cooldown_s=10.0)
        await _answers(limit, ["throttled"] * 40)
        assert limit.limit == 16 and limit.decreases == 1

    asyncio.run(scenario())


def test_adaptive_concurrency_bounds_in_flight():
    async def scenario():
        limit = AdaptiveConcurrency(3)
        peak = 0

        async def job():
            nonlocal peak
            await limit.acquire()
            peak = max(peak, limit.in_flight)
            await asyncio.sleep(0.01)
            await limit.release("ok")

        await asyncio.gather(*(job() for _ in range(30)))
        return peak

    assert asyncio.run(scenario()) == 3


def test_token_bucket_paces_after_the_burst():
    async def scenario():
        bucket = TokenBucket(per_minute=1200)  # 20 a second after a burst of 1,200
        await bucket.take(1200)
        start = time.monotonic()
        await bucket.take(10)
        waited = time.monotonic() - start
        bucket.give_back(5)  # an overestimate returned
        return waited, bucket.level

    waited, level = asyncio.run(scenario())
    assert 0.4 <= waited <= 1.0
    assert level >= 5


def test_redaction_hides_keys():
    text = "Incorrect API key provided: sk-proj-abcdef123456. You can find your key at ..."
    assert "abcdef123456" not in redact(text, None)
    assert "s3cr3t-value" not in redact("key s3cr3t-value rejected", "s3cr3t-value")


def test_backend_defaults_and_local_precision_in_the_identity():
    assert OracleSettings(backend="openai", model="m").max_tokens == 2048
    local = OracleSettings()
    assert local.max_tokens == 256 and local.batch_size == 64 and local.repetition_penalty == 1.1
    assert OracleSettings(dtype="float32").sampling.backend == "local/float32/rp1.1/nr6"
    off = OracleSettings(dtype="bfloat16", repetition_penalty=1.0, no_repeat_ngram=0)
    assert off.sampling.backend == "local/bfloat16"
    assert local.sampling.backend in ("local/float32/rp1.1/nr6", "local/bfloat16/rp1.1/nr6")
    assert OracleSettings(dtype="float32").fingerprint("v") != OracleSettings(dtype="bfloat16").fingerprint("v")
    assert OracleSettings(repetition_penalty=1.2).fingerprint("v") != local.fingerprint("v")
    # The endpoint's identity has no local-only setting in it.
    assert OracleSettings(backend="openai", model="m", repetition_penalty=1.3).sampling.backend == "openai"
    with pytest.raises(ValueError, match="dtype 'fp8'"):
        OracleSettings(dtype="fp8")


def test_the_prompt_profile_follows_the_backend_unless_set():
    assert OracleSettings().prompt_profile == "compact"
    assert OracleSettings(backend="openai", model="m").prompt_profile == "paper"
    assert OracleSettings(prompts="paper").prompt_profile == "paper"
    assert OracleSettings(backend="openai", model="m", prompts="compact").prompt_profile == "compact"
    with pytest.raises(ValueError, match="prompts 'short'"):
        OracleSettings(prompts="short")
    assert settings_from_env(environ={"REFLECTION_ORACLE_PROMPTS": "paper"}).prompt_profile == "paper"
    judge = settings_from_env(JUDGE_PREFIX, environ={"REFLECTION_ORACLE_PROMPTS": "paper"})
    assert judge.prompt_profile == "paper"  # the judge falls back to the oracle's setting
