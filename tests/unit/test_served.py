"""The served identity and the oracle's data version made from it (method/served.py)."""

import pytest

from reflection_assets.errors import SettingsError
from reflection_assets.method.requests import OracleRequest, SamplingSettings
from reflection_assets.method.served import ServedIdentity, check_probe, oracle_data_version, served_change

A = ServedIdentity("gpt-4o-mini-2024-07-18", "fp_1")


def test_the_data_version_is_the_fingerprint_alone_without_a_probe():
    assert oracle_data_version("abcd", None) == "abcd"
    assert oracle_data_version("abcd", A) != "abcd"
    assert oracle_data_version("abcd", A) == oracle_data_version("abcd", ServedIdentity("gpt-4o-mini-2024-07-18", "fp_1"))
    assert oracle_data_version("abcd", A) != oracle_data_version("abcd", ServedIdentity("gpt-4o-mini-2024-07-18", "fp_2"))


def test_model_level_leaves_the_system_fingerprint_out():
    one, two = ServedIdentity("m", "fp_1", probe="model"), ServedIdentity("m", "fp_2", probe="model")
    assert one.digest == two.digest != ServedIdentity("m2", "fp_1", probe="model").digest
    assert ServedIdentity("m", "fp_1").digest != ServedIdentity("m", "fp_2").digest


def test_metadata_round_trips_and_a_tampered_record_is_not_trusted():
    identity = ServedIdentity("m", None, (("root", "/w"), ("digest", "sha256:1")))
    facts = identity.as_metadata()
    assert ServedIdentity.from_metadata(facts) == identity
    assert ServedIdentity.from_metadata({**facts, "served_root": "/other"}) is None
    assert ServedIdentity.from_metadata({"fingerprint": "x"}) is None


def test_why_two_observations_differ():
    base = {"fingerprint": "f", **A.as_metadata()}
    moved = {"fingerprint": "f", **ServedIdentity("gpt-4o-mini-2025-04-14", "fp_1").as_metadata()}
    reconfigured = {"fingerprint": "f", **ServedIdentity(A.model, "fp_9").as_metadata()}
    assert served_change(base, moved) == "served model gpt-4o-mini-2024-07-18 → gpt-4o-mini-2025-04-14"
    assert served_change(base, reconfigured) == "serving configuration changed"
    assert served_change(base, base) is None
    assert served_change(base, {**moved, "fingerprint": "g"}) is None  # our settings changed: said as such
    assert served_change({"fingerprint": "f"}, base) is None  # nothing known of what served before


def test_the_served_identity_is_part_of_the_key_only_when_set():
    sampling = SamplingSettings("openai", "m", 0.0, 10, None)
    plain = OracleRequest((("user", "hi"),), sampling, "v1")
    assert "served" not in plain.canonical()
    served = OracleRequest((("user", "hi"),), sampling, "v1", served=A.digest)
    assert served.key != plain.key and served.canonical()["served"] == A.digest


def test_a_bad_probe_setting_names_the_choices():
    assert check_probe("model") == "model"
    with pytest.raises(SettingsError, match="on, model, off"):
        check_probe("yes")
