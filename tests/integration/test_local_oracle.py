"""The embedded model answering through the same client (slow: loads the real model)."""

import pytest

from reflection_assets.assets.resources import OracleResource, StorageResource
from reflection_assets.engines.models import CONVERSION_VERSION, EMBEDDED_NAME


@pytest.mark.slow
def test_the_embedded_model_answers_a_small_batch(home):
    oracle = OracleResource(backend="local", max_tokens=24, batch_size=4)
    client = oracle.client(StorageResource())
    requests = [
        client.request([("user", text)], "v1")
        for text in ("What is the capital of France?", "Name a primary colour.", "Say hello.")
    ]
    replies = {r.request_key: r for r in client.complete_many(requests)}
    assert len(replies) == 3
    for reply in replies.values():
        assert reply.ok and reply.text and reply.finish_reason in ("stop", "length")
        assert reply.prompt_tokens > 5 and 0 < reply.completion_tokens <= 24 and reply.cost_usd == 0
    assert "Paris" in replies[requests[0].key].text
    converted = home / "artifacts" / "models" / f"{EMBEDDED_NAME}-{CONVERSION_VERSION}"
    assert (converted / "model.safetensors").exists()
    assert "quantization_config" not in (converted / "config.json").read_text()
    again = oracle.client(StorageResource())
    assert all(r.cached for r in again.complete_many(requests)) and again.stats.sent == 0


def test_resources_build_clients_from_the_environment(home, monkeypatch):
    monkeypatch.setenv("REFLECTION_ORACLE_BACKEND", "openai")
    monkeypatch.setenv("REFLECTION_ORACLE_MODEL", "gpt-4o-mini")
    monkeypatch.setenv("REFLECTION_ORACLE_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("REFLECTION_ORACLE_API_KEY", "sk-from-env-123456")
    client = OracleResource(max_concurrency=5).client(StorageResource())
    assert client.settings.backend == "openai" and client.settings.max_concurrency == 5
    assert client.settings.api_key == "sk-from-env-123456"
    assert client.fingerprint("v1") == OracleResource().settings().fingerprint("v1")
    assert type(client.backend).__name__ == "OpenAIBackend"
