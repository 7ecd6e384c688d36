"""Evaluation test sets: the bundled prompts and the standard files a user may already
have (Vicuna, Koala, WizardLM, Self-Instruct, LIMA, AlpacaEval), read into one shape and
registered by name like datasets (registry.testsets)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reflection_assets.engines.data.datasets import NAME_PATTERN
from reflection_assets.engines.store.ledger import logged
from reflection_assets.engines.data.sources import BUNDLED_PREFIX, SourceError, read_json_rows, resolve_source
from reflection_assets.engines.store.queries import queries
from reflection_assets.engines.store.storage import Database
from reflection_assets.errors import UserError
from reflection_assets.method.digests import text_digest
from reflection_assets.method.layouts import user_turn

BUNDLED_TESTSET = "bundled"  # always available: the package's evaluation prompts
BUNDLED_TESTSET_SOURCE = BUNDLED_PREFIX + "eval_prompts"
SQL = queries("benchmark_testsets")


class TestsetError(UserError):
    """A test set that cannot be read or registered. The message is meant for the user."""

    __test__ = False  # not a pytest class


@dataclass(frozen=True)
class TestPrompt:
    prompt_id: str
    text: str
    category: str
    reference: str | None = None  # a reference answer, where the set has one

    __test__ = False

    @property
    def prompt_hash(self) -> str:
        return text_digest(self.text, 16)


Reader = Callable[[dict, str], TestPrompt]


def _text(value: object, where: str, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TestsetError(f"{where}: expected a non-empty string in {field!r}, found {value!r:.60}")
    return value.strip()


def _vicuna(row: dict, where: str) -> TestPrompt:
    text = row.get("text")
    if text is None and isinstance(row.get("turns"), list) and row["turns"]:
        text = row["turns"][0]  # MT-bench style: the first turn
    return TestPrompt(str(row.get("question_id", "")), _text(text, where, "text"), str(row.get("category") or "general"))


def _koala(row: dict, where: str) -> TestPrompt:
    return TestPrompt(str(row.get("id", "")), _text(row.get("prompt"), where, "prompt"), "koala")


def _wizardlm(row: dict, where: str) -> TestPrompt:
    return TestPrompt(
        str(row.get("idx", row.get("id", ""))),
        _text(row.get("Instruction"), where, "Instruction"),
        str(row.get("Skill") or "general"),
    )


def _self_instruct(row: dict, where: str) -> TestPrompt:
    instruction = _text(row.get("instruction"), where, "instruction")
    instances = row.get("instances") or []
    if not isinstance(instances, list) or (instances and not isinstance(instances[0], dict)):
        raise TestsetError(f"{where}: expected 'instances' to be a list of {{input, output}} objects")
    first = instances[0] if instances else {}
    extra = str(first.get("input") or "").strip()
    reference = str(first.get("output") or "").strip() or None
    return TestPrompt(
        str(row.get("id", "")),
        user_turn(instruction, extra),  # the student's join (method/layouts.py)
        str(row.get("motivation_app") or "general"),
        reference,
    )


def _lima(row: dict, where: str) -> TestPrompt:
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise TestsetError(f"{where}: expected 'conversations' to be a non-empty list of strings")
    reference = turns[1].strip() if len(turns) > 1 and isinstance(turns[1], str) and turns[1].strip() else None
    return TestPrompt("", _text(turns[0], where, "conversations[0]"), str(row.get("source") or "lima"), reference)


def _alpaca_eval(row: dict, where: str) -> TestPrompt:
    output = row.get("output")
    return TestPrompt(
        "",
        _text(row.get("instruction"), where, "instruction"),
        str(row.get("dataset") or "alpaca_eval"),
        output.strip() if isinstance(output, str) and output.strip() else None,
    )


# format -> (the field that tells it apart, reader); detection tries them in this order.
FORMATS: dict[str, tuple[str, Reader]] = {
    "vicuna": ("question_id", _vicuna),
    "wizardlm": ("Instruction", _wizardlm),
    "self-instruct": ("instances", _self_instruct),
    "lima": ("conversations", _lima),
    "alpaca-eval": ("generator", _alpaca_eval),
    "koala": ("prompt", _koala),
}


def _rows(path: Path) -> tuple[list[tuple[int, dict]], str]:
    """(line or item number, object) pairs from a JSON array or JSON Lines file (the dataset
    readers'), and which of the two the numbers count."""
    try:
        rows, label = read_json_rows(path)
    except SourceError as exc:
        raise TestsetError(str(exc)) from None
    for number, row in rows:
        if not isinstance(row, dict):
            raise TestsetError(f"{path}, {label} {number}: expected a JSON object, found {type(row).__name__}")
    if not rows:
        raise TestsetError(f"{path}: no prompts in it")
    return rows, label  # type: ignore[return-value]


def detect_format(row: dict, path: Path) -> str:
    for name, (key, _) in FORMATS.items():
        if key in row:
            return name
    if "instruction" in row:  # AlpacaEval files without a generator column
        return "alpaca-eval"
    raise TestsetError(
        f"{path}: cannot tell the test set's format from its first object (keys: "
        f"{', '.join(sorted(row)) or 'none'}); expected one of "
        + ", ".join(f"{name} ({key})" for name, (key, _) in FORMATS.items())
    )


def load_testset(source: str, fmt: str | None = None) -> list[TestPrompt]:
    try:
        path = resolve_source(source)
    except SourceError as exc:
        raise TestsetError(str(exc)) from None
    if not path.is_file():
        raise TestsetError(f"{path}: no such file")
    rows, label = _rows(path)
    fmt = fmt or detect_format(rows[0][1], path)
    if fmt not in FORMATS:
        raise TestsetError(f"test set format {fmt!r}: expected one of {', '.join(FORMATS)}")
    reader = FORMATS[fmt][1]
    prompts: list[TestPrompt] = []
    seen: set[str] = set()
    for number, row in rows:
        prompt = reader(row, f"{path}, {label} {number} ({fmt})")
        prompt_id = prompt.prompt_id or str(number)
        if prompt_id in seen:
            raise TestsetError(f"{path}, {label} {number}: prompt id {prompt_id!r} appears twice")
        seen.add(prompt_id)
        prompts.append(TestPrompt(prompt_id, prompt.text, prompt.category, prompt.reference))
    return prompts


@dataclass(frozen=True)
class TestsetSpec:
    name: str
    source: str
    format: str | None

    __test__ = False


class TestsetRegistry:
    __test__ = False

    def __init__(self, db: Database):
        self.db = db

    def add(self, name: str, source: str, fmt: str | None = None) -> tuple[TestsetSpec, int]:
        if not NAME_PATTERN.match(name):
            raise TestsetError(f"test set name {name!r}: use letters, digits, '_', '.' or '-' (at most 64)")
        if name == BUNDLED_TESTSET:
            raise TestsetError(f"test set name {name!r} is reserved for the bundled prompts")
        if not source.startswith(BUNDLED_PREFIX):
            source = str(Path(source).expanduser().resolve())
        prompts = load_testset(source, fmt)  # a malformed file fails now, not at scoring time
        with self.db.transaction() as con:  # the ledger has the row before it commits
            logged(con, self.db.ledger(), "registry.testsets", SQL.upsert_testset, [name, source, fmt])
        return TestsetSpec(name, source, fmt), len(prompts)

    def get(self, name: str) -> TestsetSpec:
        if name == BUNDLED_TESTSET:
            return TestsetSpec(name, BUNDLED_TESTSET_SOURCE, "vicuna")
        with self.db.connect() as con:
            row = con.execute(SQL.find_testset, [name]).fetchone()
        if row is None:
            known = ", ".join(s.name for s in self.list())
            raise TestsetError(
                f"test set {name!r} is not registered (known: {known}); add it with "
                "`reflection testsets add NAME FILE`"
            )
        return TestsetSpec(*row)

    def list(self) -> list[TestsetSpec]:
        with self.db.connect() as con:
            rows = con.execute(SQL.list_testsets).fetchall()
        return [TestsetSpec(BUNDLED_TESTSET, BUNDLED_TESTSET_SOURCE, "vicuna"), *(TestsetSpec(*r) for r in rows)]

    def load(self, name: str) -> list[TestPrompt]:
        spec = self.get(name)
        return load_testset(spec.source, spec.format)
