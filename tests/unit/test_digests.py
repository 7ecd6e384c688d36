"""Ids derived from content stay what they were: a changed request key would make every
cached oracle reply unreachable (paid again), a changed adapter id would retrain adapters.
The values below were computed before the digests were gathered in method/digests.py."""

from reflection_assets.engines.student.adapters import adapter_id_for
from reflection_assets.engines.benchmark.answers import GenerationSettings, Model, _loss_key
from reflection_assets.engines.student.training import TrainConfig
from reflection_assets.engines.benchmark.testsets import TestPrompt
from reflection_assets.method.records import record_id, reject_shard
from reflection_assets.method.requests import OracleRequest, SamplingSettings


def test_ids_are_stable():
    request = OracleRequest((("user", "héllo"),), SamplingSettings("openai", "gpt-4o-mini", 0.0, 2048, None), "reflect-v1")
    assert request.key == "32902446b0bbf5461b911ed549a9ee6cc1aad9aa05ec388e4ac8b545990737f5"
    assert request.fingerprint == "8c40d95a1bbba7c5"
    assert record_id("é", "x", "y") == "26c60509e5dbf202" and reject_shard(7, 16) == 10
    assert GenerationSettings().key("chat", "bfloat16") == "1745fd1bab0ff500"
    assert _loss_key(Model("baseline", "k", "m", "chat"), "original", [("a", "é", "", "o")], "auto") == "5ca901fdbec244a7"
    assert adapter_id_for("baseline", "fp", TrainConfig()) == "9285c7c31b3d442d"
    assert TestPrompt("1", "é text", "c").prompt_hash == "43b4c07757e35a26"
