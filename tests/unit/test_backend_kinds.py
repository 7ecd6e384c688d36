"""What differs between backends is a capability in engines/oracle/kinds.py, never a
comparison of the backend's name elsewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reflection_assets.engines.oracle.kinds import BACKENDS, kind_of
from reflection_assets.engines.oracle.settings import OracleSettings
from reflection_assets.errors import SettingsError

PACKAGE = Path(__file__).resolve().parents[2] / "reflection_assets"
NAME_COMPARISON = re.compile(r"""backend\s*[!=]=|[!=]=\s*["'](local|openai)["']|["'](local|openai)["']\s*[!=]=""")


def test_no_backend_name_is_compared_outside_the_registry():
    found = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "kinds.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if NAME_COMPARISON.search(line.split("#")[0])
    ]
    assert found == []


def test_the_rule_would_see_a_comparison():
    assert NAME_COMPARISON.search('if settings.backend == "local":')
    assert NAME_COMPARISON.search("return backend != 'local'")
    assert NAME_COMPARISON.search('("openai" == kind)')


def test_kinds_by_name_and_by_a_replys_identity():
    assert BACKENDS == ("local", "openai")
    assert kind_of("local/float32/rp1.1/nr6") is kind_of("local")
    with pytest.raises(SettingsError, match="expected one of local, openai"):
        kind_of("llamacpp")


def test_settings_follow_the_capabilities():
    local, endpoint = OracleSettings(backend="local"), OracleSettings(backend="openai", model="m")
    assert (local.max_tokens, endpoint.max_tokens) == (256, 2048)
    assert local.sampling.backend.startswith("local/") and endpoint.sampling.backend == "openai"
    with pytest.raises(SettingsError, match="needs a model name"):
        OracleSettings(backend="openai", model="")
    with pytest.raises(SettingsError, match="needs the openai backend"):
        OracleSettings(backend="local", mode="batch")
    OracleSettings(backend="openai", model="m", mode="batch")
    with pytest.raises(SettingsError, match="expected one of local, openai"):
        OracleSettings(backend="llamacpp")
