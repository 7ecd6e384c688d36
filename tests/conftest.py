"""Shared fixtures: every test gets its own DAGSTER_HOME, DuckDB file and artifacts folder."""

from __future__ import annotations

import os

# Four shards keep each test to a few Dagster runs; read when the definitions load.
os.environ.setdefault("REFLECTION_SHARDS", "4")
# The suite's xdist workers share the cores: each model-loading process takes its share of
# them instead of a thread per core (engines/settings.cpu_threads says why).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault(
        "REFLECTION_THREADS", str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    )

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import dagster as dg  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# The longest test modules first, the shortest last, each module's tests together and in
# their order (a module's fixtures, a PostgreSQL server or a `dagster dev`, are set up once
# per worker that runs it): the workers of `make test` (xdist's worksteal, which takes from
# the end of a busy worker's queue) then finish together, short tests filling the end,
# rather than one worker running a 90-second test while the other has nothing left (by
# folder, e2e first: one worker idle for the last 86 s of 688). A module's seconds are a
# whole run's (tests/durations.json, written by `pytest --save-durations`); a module not in
# it counts its folder's typical seconds per test.
DURATIONS = Path(__file__).with_name("durations.json")
FOLDER_DEFAULT_S = {"e2e": 10.0, "integration": 1.0, "unit": 0.1}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--save-durations", action="store_true",
                     help="write each test module's seconds in this run (setup, call and teardown of its "
                          "tests) into tests/durations.json, which orders the next runs longest first")


def module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    known = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    guessed: dict[str, float] = {}
    for item in items:
        module = module_of(item.nodeid)
        guessed[module] = guessed.get(module, 0.0) + FOLDER_DEFAULT_S.get(item.path.parent.name, 1.0)
    # Stable: a module's tests keep their order.
    items.sort(key=lambda item: -known.get(module_of(item.nodeid), guessed[module_of(item.nodeid)]))


_measured: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    module = module_of(report.nodeid)
    _measured[module] = _measured.get(module, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    # Only where every report arrives: the xdist controller, or a run without workers.
    if not session.config.getoption("--save-durations") or hasattr(session.config, "workerinput"):
        return
    known = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    known.update({module: round(seconds, 1) for module, seconds in _measured.items()})
    DURATIONS.write_text(json.dumps(dict(sorted(known.items())), indent=1) + "\n")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary DAGSTER_HOME holding the dagster.yaml the package writes (SQLite); the
    database and artifacts live inside it, as they do by default."""
    from reflection_assets.dagster_instance import write_instance_config

    home = tmp_path / "dagster_home"
    monkeypatch.delenv("DAGSTER_PG_URL", raising=False)
    write_instance_config(home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.delenv("REFLECTION_DUCKDB", raising=False)
    monkeypatch.delenv("REFLECTION_ARTIFACTS", raising=False)
    return home


@pytest.fixture
def instance(home: Path):
    with dg.instance_for_test(temp_dir=str(home)) as inst:
        yield inst


@pytest.fixture(scope="session")
def shared_artifacts(tmp_path_factory):
    """One conversion of the embedded model for every test that loads it, in every worker of
    the run: each worker's artifacts folder is its own (adapters, staging), but their
    `models` folder is one, and engines/models/loading.py converts in one process at a time
    (the other waits and uses it: 12 s of CPU not spent twice)."""
    folder = tmp_path_factory.mktemp("artifacts")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        models = tmp_path_factory.getbasetemp().parent / "models"  # this run's, beside the workers' folders
        models.mkdir(exist_ok=True)
        (folder / "models").symlink_to(models, target_is_directory=True)
    return folder


def write_json(path: Path, rows: list) -> Path:
    path.write_text(json.dumps(rows, ensure_ascii=False))
    return path


def alpaca_rows(n: int, with_input_every: int = 3, seed: str = "") -> list[dict]:
    """n distinct Alpaca records; every `with_input_every`-th has an input."""
    return [
        {
            "instruction": f"Task {seed}{i}: explain item {i} in a sentence.",
            "input": f"context for item {i}" if i % with_input_every == 0 else "",
            "output": f"Item {i} is explained here, answer {seed}{i * 7}.",
        }
        for i in range(n)
    ]


@pytest.fixture(scope="session")
def tiny_student(shared_artifacts) -> Path:
    """A Llama-shaped model of two small layers, built from a config with the embedded
    model's tokenizer and saved as a model folder: for tests of the graph's plumbing that
    train, score and answer with a student, where the embedded model's 135M parameters would
    only add minutes of CPU (its own tests use it)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from reflection_assets.engines.models.loading import EMBEDDED_NAME, load_tokenizer

    folder = shared_artifacts / "tiny-student"
    if not (folder / "config.json").exists():
        tokenizer = load_tokenizer(EMBEDDED_NAME, shared_artifacts)
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def raw_home(tmp_path_factory):
    """`raw_home(dest, name, rows, shards)` makes `dest` a DAGSTER_HOME in which dataset `name`
    is registered from `rows` and its raw_dataset materialized on `shards` shards, through the
    `reflection` command as a user runs it (`datasets add`, then `run --select raw_dataset`).
    Each distinct one is made once per worker and copied: the tests that start from it change
    their copy, never the original, and do not pay the two commands again (4 to 6 s of CPU).
    The registered source file and the run logs' paths stay those of the original folder: the
    copies share that file read-only (a test that changes its source registers its own)."""
    import shutil
    import subprocess
    import sys

    made: dict[tuple, Path] = {}

    def copy(dest: Path, name: str, rows: list[dict], shards: int) -> Path:
        key = (name, json.dumps(rows, sort_keys=True), shards)
        if key not in made:
            folder = tmp_path_factory.mktemp(f"raw-{name}-")
            env = dict(os.environ, DAGSTER_HOME=str(folder / "home"), REFLECTION_SHARDS=str(shards))
            for variable in ("REFLECTION_DUCKDB", "REFLECTION_ARTIFACTS", "DAGSTER_PG_URL"):
                env.pop(variable, None)
            source = write_json(folder / f"{name}.json", rows)
            for args in (("datasets", "add", name, str(source)), ("run", "--dataset", name, "--select", "raw_dataset")):
                done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "reflection"), *args],
                                      capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
                assert done.returncode == 0, done.stdout + done.stderr
            made[key] = folder / "home"
        shutil.copytree(made[key], dest)
        return dest

    return copy
