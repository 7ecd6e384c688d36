"""Test set loaders for the standard files, the registry, and errors that name the place."""

import json

import pytest

from reflection_assets.engines.store.storage import Database
from reflection_assets.engines.benchmark.testsets import (
    BUNDLED_TESTSET,
    TestPrompt,
    TestsetError,
    TestsetRegistry,
    load_testset,
)


def jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


# One file per standard layout, as the published files spell their fields.
LAYOUTS = {
    "vicuna": (
        [{"question_id": 1, "text": "Plan a trip.", "category": "generic"},
         {"question_id": 2, "text": "Explain tides.", "category": "knowledge"}],
        [TestPrompt("1", "Plan a trip.", "generic"), TestPrompt("2", "Explain tides.", "knowledge")],
    ),
    "mt-bench-style vicuna": (
        [{"question_id": 81, "turns": ["Write a blog post.", "Rewrite it."], "category": "writing"}],
        [TestPrompt("81", "Write a blog post.", "writing")],
    ),
    "koala": (
        [{"id": "k1", "prompt": "What is a koala?"}, {"id": "k2", "prompt": "Name a tree."}],
        [TestPrompt("k1", "What is a koala?", "koala"), TestPrompt("k2", "Name a tree.", "koala")],
    ),
    "wizardlm": (
        [{"idx": 1, "Skill": "Math", "Difficulty": 3, "Instruction": "Add 2 and 3."}],
        [TestPrompt("1", "Add 2 and 3.", "Math")],
    ),
    "self-instruct": (
        [{"id": "user_oriented_task_0", "motivation_app": "Grammarly", "instruction": "Fix the grammar.",
          "instances": [{"input": "he go home", "output": "He goes home."}]},
         {"id": "user_oriented_task_1", "motivation_app": "Notion", "instruction": "List three tips.",
          "instances": [{"input": "", "output": "1. a 2. b 3. c"}]}],
        [TestPrompt("user_oriented_task_0", "Fix the grammar.\n\nhe go home", "Grammarly", "He goes home."),
         TestPrompt("user_oriented_task_1", "List three tips.", "Notion", "1. a 2. b 3. c")],
    ),
    "lima": (
        [{"conversations": ["How do magnets work?"], "source": "stackexchange"},
         {"conversations": ["Write a haiku.", "Snow falls..."], "source": "lima"}],
        [TestPrompt("1", "How do magnets work?", "stackexchange"), TestPrompt("2", "Write a haiku.", "lima", "Snow falls...")],
    ),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_standard_layout_is_detected_and_read(tmp_path, layout):
    rows, expected = LAYOUTS[layout]
    assert load_testset(jsonl(tmp_path / "set.jsonl", rows)) == expected


def test_alpaca_eval_as_a_json_array(tmp_path):
    rows = [{"instruction": "Say hi.", "output": "Hi!", "generator": "text_davinci_003", "dataset": "helpful_base"},
            {"instruction": "Count to 3.", "output": "1 2 3", "generator": "text_davinci_003", "dataset": "koala"}]
    path = tmp_path / "alpaca_eval.json"
    path.write_text(json.dumps(rows))
    assert load_testset(str(path)) == [
        TestPrompt("1", "Say hi.", "helpful_base", "Hi!"), TestPrompt("2", "Count to 3.", "koala", "1 2 3")
    ]


def test_the_bundled_prompts():
    prompts = load_testset("bundled:eval_prompts")
    assert len(prompts) == 45 and len({p.category for p in prompts}) == 9
    assert len({p.prompt_id for p in prompts}) == 45


@pytest.mark.parametrize(
    "content, fmt, message",
    [
        ('{"question_id": 1, "text": "ok"}\n{"question_id": 2, "text": ', None, r"set.jsonl: line 2, column 28: not valid JSON .*expected one JSON object per line"),
        ('{"question_id": 1, "text": "ok"}\n{"question_id": 2, "text": ""}\n', None,
         r"set.jsonl, line 2 \(vicuna\): expected a non-empty string in 'text'"),
        ('{"question_id": 1, "text": "ok"}\n[1, 2]\n', None, r"set.jsonl, line 2: expected a JSON object, found list"),
        ('{"question": "no known field"}\n', None, r"cannot tell the test set.s format .*\(keys: question\)"),
        ('{"question_id": 1, "text": "a"}\n{"question_id": 1, "text": "b"}\n', None, r"line 2: prompt id '1' appears twice"),
        ('{"conversations": "not a list"}\n', None, r"line 1 \(lima\): expected 'conversations' to be a non-empty list"),
        ('{"question_id": 1, "text": "ok"}\n', "koala", r"line 1 \(koala\): expected a non-empty string in 'prompt'"),
        ("\n\n", None, r"no prompts in it"),
    ],
)
def test_malformed_files_name_the_file_line_and_expectation(tmp_path, content, fmt, message):
    path = tmp_path / "set.jsonl"
    path.write_text(content)
    with pytest.raises(TestsetError, match=message):
        load_testset(str(path), fmt)


def test_registry(tmp_path):
    registry = TestsetRegistry(Database(str(tmp_path / "db.duckdb")))
    path = jsonl(tmp_path / "koala.jsonl", LAYOUTS["koala"][0])
    spec, count = registry.add("koala", path)
    assert count == 2 and spec.format is None
    assert [s.name for s in registry.list()] == [BUNDLED_TESTSET, "koala"]
    assert registry.load("koala") == LAYOUTS["koala"][1]
    assert len(registry.load(BUNDLED_TESTSET)) == 45
    with pytest.raises(TestsetError, match="'nope' is not registered .*known: bundled, koala"):
        registry.get("nope")
    with pytest.raises(TestsetError, match="reserved"):
        registry.add(BUNDLED_TESTSET, path)
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{oops\n")
    with pytest.raises(TestsetError, match="broken.jsonl: line 1, column"):
        registry.add("broken", str(broken))
    assert [s.name for s in registry.list()] == [BUNDLED_TESTSET, "koala"]  # nothing half-registered
    with pytest.raises(TestsetError, match="no such file"):
        registry.add("missing", str(tmp_path / "missing.jsonl"))
