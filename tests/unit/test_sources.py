"""Reading every supported source format, and the errors for files that cannot be read."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reflection_assets.engines.data.sources import (
    SourceError,
    detect_format,
    fingerprint_source,
    read_source,
    resolve_source,
)
from reflection_assets.method.records import Record, Rejected, RejectReason, to_record
from tests.conftest import write_json

ROWS = [
    {"instruction": "Say hi", "input": "", "output": "Hi"},
    {"instruction": "Add", "input": "2, 3", "output": "5"},
]


def test_alpaca_json_array(tmp_path: Path):
    path = write_json(tmp_path / "a.json", ROWS)
    assert detect_format(path) == "json"
    assert read_source(path) == [(1, ROWS[0]), (2, ROWS[1])]


def test_json_wrapped_in_an_object(tmp_path: Path):
    path = write_json(tmp_path / "a.json", {"data": ROWS})
    assert [row for _, row in read_source(path)] == ROWS


def test_single_conversation_object_is_one_record(tmp_path: Path):
    row = {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}
    path = write_json(tmp_path / "one.json", row)
    assert read_source(path) == [(1, row)]


def test_jsonl_rows_are_line_numbers_and_json_extension_is_sniffed(tmp_path: Path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n")
    assert detect_format(path) == "jsonl"
    assert read_source(path) == [(1, ROWS[0]), (3, ROWS[1])]


def test_csv_with_quotes_and_newlines(tmp_path: Path):
    path = tmp_path / "a.csv"
    path.write_text('instruction,input,output\n"Write, please","","line one\nline two"\nAdd,"2, 3",5\n')
    rows = read_source(path)
    assert rows[0] == (1, {"instruction": "Write, please", "input": "", "output": "line one\nline two"})
    assert rows[1][1]["input"] == "2, 3"


def test_tsv(tmp_path: Path):
    path = tmp_path / "a.tsv"
    path.write_text("prompt\tanswer\nQ\tA\n")
    assert read_source(path) == [(1, {"prompt": "Q", "answer": "A"})]


def test_parquet_with_conversations(tmp_path: Path):
    path = tmp_path / "a.parquet"
    table = pa.Table.from_pylist(
        [{"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Yo"}]}]
    )
    pq.write_table(table, path)
    [(row_number, row)] = read_source(path)
    record = to_record(row)
    assert row_number == 1 and isinstance(record, Record) and record.output == "Yo"


def test_hugging_face_saved_dataset(tmp_path: Path):
    import datasets

    folder = tmp_path / "saved"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(folder))
    assert detect_format(folder) == "hf"
    assert [row for _, row in read_source(folder)] == ROWS
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "dd"))
    assert len(read_source(tmp_path / "dd")) == 2


def test_invalid_utf8_in_one_row_rejects_only_that_row(tmp_path: Path):
    path = tmp_path / "a.jsonl"
    good = json.dumps(ROWS[0]).encode()
    bad = b'{"instruction": "caf\xe9", "output": "x"}'
    path.write_bytes(good + b"\n" + bad + b"\n")
    rows = read_source(path)
    assert isinstance(to_record(rows[0][1]), Record)
    rejected = to_record(rows[1][1])
    assert isinstance(rejected, Rejected) and rejected.reason == RejectReason.UNDECODABLE


def test_utf8_bom_is_ignored(tmp_path: Path):
    path = tmp_path / "a.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROWS).encode())
    assert len(read_source(path)) == 2


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("broken.json", '[{"instruction": "a", "output": "b"},\n {"instruction": }]', "line 2, column"),
        ("broken.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c",\n', "line 2"),
        ("scalar.json", "42", "expected a JSON array of records"),
        ("ragged.csv", "instruction,output\na,b\nc,d,e\n", "line 3: 3 fields, expected 2"),
        ("empty.csv", "", "expected a header row"),
        ("fake.parquet", "not parquet", "not a readable Parquet file"),
        ("data.txt", "whatever", "cannot tell the format"),
    ],
)
def test_unreadable_files_name_file_line_and_expectation(tmp_path: Path, name, content, expected):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(SourceError) as err:
        read_source(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_missing_file_and_plain_folder(tmp_path: Path):
    with pytest.raises(SourceError, match="no such file"):
        read_source(tmp_path / "nope.json")
    (tmp_path / "folder").mkdir()
    with pytest.raises(SourceError, match="not one saved by Hugging Face"):
        read_source(tmp_path / "folder")


def test_fingerprint_follows_content(tmp_path: Path):
    path = write_json(tmp_path / "a.json", ROWS)
    first = fingerprint_source(path)
    assert fingerprint_source(path) == first
    write_json(path, ROWS[:1])
    assert fingerprint_source(path) != first


def test_bundled_sample_is_a_real_dataset():
    rows = read_source(resolve_source("bundled:sample"))
    records = [to_record(row) for _, row in rows]
    assert len(records) >= 120 and all(isinstance(r, Record) for r in records)
    assert sum(1 for r in records if r.input) >= 20
    categories = {row["category"] for _, row in rows}
    assert {"writing", "coding", "maths", "reasoning", "knowledge", "extraction",
            "classification", "brainstorming"} <= categories
    prompts = read_source(resolve_source("bundled:eval_prompts"))
    assert len(prompts) >= 40 and len({row["category"] for _, row in prompts}) >= 9
    with pytest.raises(SourceError, match="no such bundled dataset"):
        resolve_source("bundled:nope")
