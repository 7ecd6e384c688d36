"""The method layer's record rules: normalization, ids, shards and field mapping."""

from reflection_assets.method.records import (
    Record,
    Rejected,
    RejectReason,
    normalize_text,
    record_id,
    reject_shard,
    shard_keys,
    shard_of,
    to_record,
)


def test_normalize_text_nfc_line_endings_and_trim():
    decomposed = "Cafe\u0301\r\nline two\rthree  "
    assert normalize_text(decomposed) == "Caf\u00e9\nline two\nthree"
    assert normalize_text("  \n\t ") == ""


def test_record_id_is_stable_and_respects_field_boundaries():
    assert record_id("a", "", "b") == record_id("a", "", "b")
    assert len(record_id("a", "", "b")) == 16
    assert record_id("ab", "", "c") != record_id("a", "b", "c")
    assert record_id("a", "b", "") != record_id("a", "", "b")


def test_same_content_in_other_forms_gets_the_same_id():
    one = to_record({"instruction": "Cafe\u0301 ", "output": "ok\r\n"})
    two = to_record({"prompt": "Caf\u00e9", "answer": "ok"})
    assert isinstance(one, Record) and isinstance(two, Record)
    assert one.record_id == two.record_id


def test_shards_are_stable_and_in_range():
    ids = [record_id(str(i), "", "x") for i in range(2000)]
    shards = [shard_of(i, 16) for i in ids]
    assert shards == [shard_of(i, 16) for i in ids]
    assert set(shards) == set(range(16))  # 2,000 ids reach every shard
    assert 0 <= reject_shard(12, 16) < 16
    assert shard_keys(16)[:2] == ["00", "01"] and shard_keys(16)[-1] == "15"
    assert shard_keys(200)[0] == "000"


def test_aliases_map_fields():
    record = to_record({"question": "Q?", "context": "ctx", "response": "R."})
    assert isinstance(record, Record)
    assert (record.instruction, record.input, record.output) == ("Q?", "ctx", "R.")


def test_instruction_alias_priority_and_field_map():
    record = to_record({"instruction": "first", "prompt": "second", "output": "o"})
    assert isinstance(record, Record) and record.instruction == "first"
    mapped = to_record({"Frage": "Wie?", "Antwort": "So."}, {"instruction": "Frage", "output": "Antwort"})
    assert isinstance(mapped, Record) and (mapped.instruction, mapped.output) == ("Wie?", "So.")


def test_input_is_kept_apart_and_optional():
    with_input = to_record({"instruction": "Sum", "input": "2 3", "output": "5"})
    no_input = to_record({"instruction": "Sum", "input": None, "output": "5"})
    assert isinstance(with_input, Record) and with_input.input == "2 3"
    assert isinstance(no_input, Record) and no_input.input == ""
    assert with_input.record_id != no_input.record_id


def test_sharegpt_and_openai_conversations():
    share = to_record(
        {
            "conversations": [
                {"from": "system", "value": "be nice"},
                {"from": "human", "value": "Hi?"},
                {"from": "gpt", "value": "Hello."},
                {"from": "human", "value": "later turn"},
            ]
        }
    )
    openai = to_record(
        {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}
    )
    assert isinstance(share, Record) and isinstance(openai, Record)
    assert (share.instruction, share.output) == ("Hi?", "Hello.")
    assert share.record_id == openai.record_id


def _reason(row, **kw) -> str:
    result = to_record(row, **kw)
    assert isinstance(result, Rejected), result
    return result.reason


def test_rejects_say_why():
    assert _reason({"instruction": "  ", "output": "x"}) == RejectReason.MISSING_INSTRUCTION
    assert _reason({"output": "x"}) == RejectReason.MISSING_INSTRUCTION
    assert _reason({"instruction": "x"}) == RejectReason.MISSING_RESPONSE
    assert _reason({"instruction": "x", "output": 42}) == RejectReason.NOT_TEXT
    assert _reason({"instruction": ["x"], "output": "y"}) == RejectReason.NOT_TEXT
    assert _reason({"instruction": "bad \udcff byte", "output": "y"}) == RejectReason.UNDECODABLE
    assert _reason({"instruction": "x" * 60, "output": "y" * 60}, max_record_chars=100) == (
        RejectReason.TOO_LONG
    )
    assert _reason(["not", "an", "object"]) == RejectReason.NOT_A_RECORD
    assert _reason({"messages": "nope"}) == RejectReason.NOT_A_RECORD
    assert _reason({"messages": [{"role": "user", "content": "only a question"}]}) == (
        RejectReason.MISSING_RESPONSE
    )


def test_reject_detail_names_the_field():
    result = to_record({"prompt": "x", "answer": 3.5})
    assert isinstance(result, Rejected)
    assert "'answer'" in result.detail and "float" in result.detail
