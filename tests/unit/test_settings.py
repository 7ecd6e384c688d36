"""One source of truth for settings: the docs' tables (docs/oracle.md, docs/adapters.md)
and the Dagster resources and configs come from OracleSettings and TrainConfig, and this
test fails when they drift."""

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from reflection_assets.assets.adapters import MAIN_JOB_MAX_STEPS, AdapterConfig
from reflection_assets.assets.resources import JudgeResource, OracleResource, StorageResource
from reflection_assets.engines.oracle.settings import env_settings
from reflection_assets.engines.student.training import TrainConfig

DOCS = Path(__file__).resolve().parents[2] / "docs"
ORACLE_PAGE = (DOCS / "oracle.md").read_text()
ADAPTERS_PAGE = (DOCS / "adapters.md").read_text()


def oracle_table() -> list[tuple[list[str], str]]:
    """([variable suffixes], default cell) per row of the oracle page's table."""
    head = ORACLE_PAGE.index("| variable (`REFLECTION_ORACLE_…`) | default | meaning |")
    rows = []
    for line in ORACLE_PAGE[head:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        names, default, _ = (cell.strip() for cell in line.strip("|").split("|", 2))
        rows.append((re.findall(r"`([A-Z_]+)`", names), default))
    return rows


def test_the_oracle_page_lists_every_oracle_setting_and_its_default():
    rows = oracle_table()
    documented = [name for names, _ in rows for name in names]
    assert sorted(documented) == sorted(e.env for e in env_settings())
    by_env = {e.env: e for e in env_settings()}
    for names, cell in rows:
        parts = [part.strip() for part in cell.split(",")] if len(names) > 1 else [cell]
        for name, part in zip(names, parts):
            default = by_env[name].default
            if default is None:
                continue
            shown = f"{default:g}" if isinstance(default, float) else str(default)
            assert shown in part, f"docs/oracle.md says {part!r} for {name}, the default is {shown}"


def test_the_resources_have_every_setting_with_its_description():
    names = {e.name for e in env_settings()}
    for resource in (OracleResource, JudgeResource):
        assert set(resource.model_fields) == names
    for entry in env_settings():
        description = OracleResource.model_fields[entry.name].description
        assert entry.doc in description and f"REFLECTION_ORACLE_{entry.env}" in description
    assert OracleResource().settings().backend == "local"
    assert {"database", "artifacts", "connection_config"} <= set(StorageResource.model_fields)


def test_the_adapter_config_and_the_adapters_page_follow_train_config():
    knobs = [f for f in dataclasses.fields(TrainConfig) if "doc" in f.metadata]
    assert list(AdapterConfig.model_fields) == [f.name for f in knobs]
    config = AdapterConfig()
    assert config.train_config() == dataclasses.replace(TrainConfig(), max_steps=MAIN_JOB_MAX_STEPS)
    block = ADAPTERS_PAGE[ADAPTERS_PAGE.index("baseline_adapter: &lora"):]
    block = block[: block.index("```")]
    documented = yaml.safe_load(block)["baseline_adapter"]
    assert list(documented) == [f.name for f in knobs]
    for name, value in documented.items():
        expected = getattr(config, name)
        assert value == expected, f"docs/adapters.md says {name}: {value}, the default is {expected}"


def test_resources_name_the_variables_they_come_from():
    environ = {
        "REFLECTION_ORACLE_MODEL": "m",
        "REFLECTION_JUDGE_MODEL": "j",
        "REFLECTION_ORACLE_MAX_TOKENS": "99",
        "REFLECTION_ORACLE_TEMPERATURE": "0.5",  # a float: read when used, not an EnvVar
        "REFLECTION_DUCKDB": "/data/r.duckdb",
    }
    oracle = OracleResource.from_environment(environ)
    assert oracle.model.env_var_name == "REFLECTION_ORACLE_MODEL"
    assert oracle.max_tokens.env_var_name == "REFLECTION_ORACLE_MAX_TOKENS"
    assert oracle.temperature is None and oracle.backend is None
    judge = JudgeResource.from_environment(environ)
    assert judge.model.env_var_name == "REFLECTION_JUDGE_MODEL"
    assert judge.max_tokens.env_var_name == "REFLECTION_ORACLE_MAX_TOKENS"  # the judge falls back
    storage = StorageResource.from_environment(environ)
    assert storage.database.env_var_name == "REFLECTION_DUCKDB" and storage.artifacts == ""


def test_the_cli_gets_the_resources_the_runs_get_and_says_where_each_value_comes_from(monkeypatch, tmp_path):
    """definitions.resource builds the code location's resource (its EnvVars resolved) from
    the environment of now; a value from a variable is reported as that variable, not as
    `resource`, though it reached the resource as a resolved EnvVar."""
    from reflection_assets.definitions import resource

    monkeypatch.setenv("REFLECTION_ORACLE_MODEL", "m")
    monkeypatch.setenv("REFLECTION_JUDGE_MODEL", "j")
    monkeypatch.setenv("REFLECTION_ORACLE_MAX_TOKENS", "99")
    monkeypatch.setenv("REFLECTION_DUCKDB", str(tmp_path / "r.duckdb"))
    oracle = resource("oracle")
    settings, sources = oracle.settings_with_sources()
    assert (oracle.model, settings.model, sources["model"]) == ("m", "m", "REFLECTION_ORACLE_MODEL")
    assert (settings.max_tokens, sources["max_tokens"]) == (99, "REFLECTION_ORACLE_MAX_TOKENS")
    assert sources["temperature"] == "default"
    settings, sources = resource("judge").settings_with_sources()
    assert (settings.model, sources["model"]) == ("j", "REFLECTION_JUDGE_MODEL")
    assert (settings.max_tokens, sources["max_tokens"]) == (99, "REFLECTION_ORACLE_MAX_TOKENS")
    assert resource("storage").database_path() == str(tmp_path / "r.duckdb")
    monkeypatch.setenv("REFLECTION_ORACLE_MODEL", "n")  # read again: the environment of now
    assert resource("oracle").settings().model == "n"
    explicit = OracleResource(model="x").settings_with_sources()[1]["model"]
    assert explicit == "resource"  # a value the environment did not give


def test_the_commands_find_the_store_where_the_runs_find_it(monkeypatch, tmp_path):
    """The commands that only use the store take engines/store/location.StoreLocation, not the
    definitions' resource: the same database, artifacts, lock wait and connection settings,
    whichever variables are set."""
    from reflection_assets.cli.common import storage_resource
    from reflection_assets.definitions import resource

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    for variables in ({}, {"REFLECTION_DUCKDB": str(tmp_path / "r.duckdb")},
                      {"REFLECTION_DUCKDB": str(tmp_path / "s.duckdb"), "REFLECTION_ARTIFACTS": str(tmp_path / "a")}):
        for name in ("REFLECTION_DUCKDB", "REFLECTION_ARTIFACTS"):
            monkeypatch.delenv(name, raising=False)
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        runs, command = resource("storage"), storage_resource()
        assert (command.database_path(), command.artifacts_path()) == (runs.database_path(), runs.artifacts_path())
        assert (command.lock_timeout_s, command.connection_config) == (runs.lock_timeout_s, runs.connection_config)
        assert command.db().path == runs.db().path == Path(variables.get("REFLECTION_DUCKDB", tmp_path / "home" / "reflection.duckdb"))


def test_a_whole_number_that_does_not_parse_is_one_line_naming_its_variable(monkeypatch):
    """Dagster's own resolution of an int EnvVar stops with a traceback; the CLI's resource
    leaves the field unset and the settings reader names the variable."""
    from reflection_assets.definitions import resource
    from reflection_assets.errors import SettingsError

    monkeypatch.setenv("REFLECTION_ORACLE_MAX_CONCURRENCY", "abc")
    monkeypatch.setenv("REFLECTION_STUDENT_MAX_LENGTH", "12x")
    with pytest.raises(SettingsError, match=r"^REFLECTION_ORACLE_MAX_CONCURRENCY='abc': expected a number$"):
        resource("oracle").settings()
    with pytest.raises(SettingsError, match=r"REFLECTION_STUDENT_MAX_LENGTH='12x'"):
        resource("student").settings_with_sources()


def test_no_resource_is_built_outside_the_definitions():
    """The CLI and headless running take their resources from definitions.resource, not by
    constructing them with no arguments so that they read the environment themselves."""
    package = Path(__file__).resolve().parents[2] / "reflection_assets"
    found = [
        f"{path.relative_to(package)}:{number}"
        for path in package.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\b(Storage|Oracle|Judge|Student)Resource\(\)", line)
    ]
    assert not found


def test_the_answers_backend_is_read_from_the_environment_and_checked():
    from reflection_assets.engines.benchmark.answers import BenchmarkError, Model
    from reflection_assets.engines.benchmark.served_answers import AnswersBackend

    assert AnswersBackend.from_env({}) == AnswersBackend() and not AnswersBackend().served
    assert AnswersBackend().key_part() == {}  # local answers keep the keys they always had
    served = AnswersBackend.from_env({"REFLECTION_ANSWERS_BACKEND": "openai", "REFLECTION_ANSWERS_BASE_URL": "http://h/v1",
                                      "REFLECTION_ANSWERS_API_KEY": "sk-x", "REFLECTION_ANSWERS_MAX_CONCURRENCY": "8"})
    assert served.served and served.max_concurrency == 8 and served.key_part() == {"backend": "openai"}
    assert "sk-x" not in repr(served)
    adapter = Model("recycled", "0123456789abcdef", "base", "auto", adapter_path=Path("/a"))
    assert served.served_name(adapter) == "0123456789abcdef"
    with pytest.raises(BenchmarkError, match="compare_base .* needs REFLECTION_ANSWERS_MODEL"):
        served.served_name(Model("base", "base:b", "b", "auto"))
    with pytest.raises(BenchmarkError, match="REFLECTION_ANSWERS_BACKEND='vllm': expected one of local, openai"):
        AnswersBackend.from_env({"REFLECTION_ANSWERS_BACKEND": "vllm"})
    with pytest.raises(BenchmarkError, match="needs REFLECTION_ANSWERS_BASE_URL"):
        AnswersBackend.from_env({"REFLECTION_ANSWERS_BACKEND": "openai"})
    with pytest.raises(BenchmarkError, match="MAX_CONCURRENCY='0'"):
        AnswersBackend.from_env({"REFLECTION_ANSWERS_MAX_CONCURRENCY": "0"})


def test_model_threads_default_to_every_core_and_a_bad_value_is_named(monkeypatch):
    import os

    from reflection_assets.engines.settings import SettingsError, cpu_threads

    monkeypatch.delenv("REFLECTION_THREADS", raising=False)
    assert cpu_threads() == max(1, os.cpu_count() or 1)
    monkeypatch.setenv("REFLECTION_THREADS", "3")
    assert cpu_threads() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("REFLECTION_THREADS", bad)
        with pytest.raises(SettingsError, match=f"REFLECTION_THREADS='{bad}': expected a whole number of threads from 1"):
            cpu_threads()


def test_auto_precision_is_kept_per_cpu_and_torch_version(tmp_path, monkeypatch):
    """`reflection status` and every run's observation put an in-process model's resolved
    precision in its fingerprint; on a host without a GPU they read torch's answer from the
    cache instead of importing torch. The answer is torch's, and a GPU host always asks."""
    import subprocess
    import sys

    from reflection_assets.engines.oracle import settings
    from tests.conftest import REPO

    code = ("import sys; from reflection_assets.engines.oracle.settings import resolve_dtype; "
            "print(resolve_dtype('auto'), 'torch' in sys.modules)")
    env = {"PATH": "/usr/bin:/bin", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    first, again = (subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env,
                                   timeout=120, check=True).stdout.split() for _ in range(2))
    assert first == [settings._dtype_from_torch(), "True"]
    assert again == [first[0], "False"]  # the same answer, without torch
    assert [p.name.split("-")[0] for p in (tmp_path / "cache" / "reflection-assets").iterdir()] == ["dtype"]

    asked = []
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(settings, "_GPU_DEVICES", (str(tmp_path),))  # a device file exists: ask every time
    assert [settings.hardware_answer("dtype", lambda: asked.append(1) or "float32") for _ in range(2)] == ["float32"] * 2
    assert len(asked) == 2
    monkeypatch.setattr(settings, "_GPU_DEVICES", ())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "unwritable" / "x"))
    (tmp_path / "unwritable").write_text("a file, not a folder")
    assert settings.hardware_answer("dtype", lambda: "float32") == "float32"  # only the import is lost
