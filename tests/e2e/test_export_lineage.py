"""`reflection export` and `reflection lineage` on a dataset recycled through Dagster."""

import json

import dagster as dg
import datasets
import pytest

from reflection_assets.cli import main
from tests.conftest import write_json
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.reflection_oracle import plan, respond
from tests.integration.test_raw_dataset import register
from tests.integration.test_reflection_assets import ROWS, run, tagged  # noqa: F401


@pytest.fixture(scope="module")
def recycled(tmp_path_factory):
    """One dataset recycled through Dagster against the scripted oracle, which every test
    here only reads (exports go to each test's own folder): its DAGSTER_HOME."""
    from reflection_assets.dagster_instance import write_instance_config

    folder = tmp_path_factory.mktemp("recycled")
    home = folder / "dagster_home"
    with pytest.MonkeyPatch.context() as patch:
        for name in ("DAGSTER_PG_URL", "REFLECTION_DUCKDB", "REFLECTION_ARTIFACTS"):
            patch.delenv(name, raising=False)
        write_instance_config(home)
        patch.setenv("DAGSTER_HOME", str(home))
        with FakeOpenAI(responder=respond, plan=plan) as server, dg.instance_for_test(temp_dir=str(home)) as instance:
            patch.setenv("REFLECTION_ORACLE_BACKEND", "openai")
            patch.setenv("REFLECTION_ORACLE_MODEL", "gpt-4o-mini")
            patch.setenv("REFLECTION_ORACLE_BASE_URL", server.base_url)
            patch.setenv("REFLECTION_ORACLE_API_KEY", "sk-test-reflection-key")
            register(instance, "tagged", write_json(folder / "tagged.json", ROWS))
            run(instance)
        yield home


@pytest.mark.parametrize(("fmt", "suffix", "loader"), [
    ("alpaca", "json", "json"), ("jsonl", "jsonl", "json"), ("sharegpt", "json", "json"), ("parquet", "parquet", "parquet"),
])
def test_exports_load_with_datasets(recycled, tmp_path, capsys, fmt, suffix, loader):
    out = tmp_path / "export" / f"tagged.{suffix}"
    assert main(["export", "tagged", "--format", fmt, "--out", str(out)]) == 0
    assert f"wrote {len(ROWS)} records" in capsys.readouterr().out
    loaded = datasets.load_dataset(loader, data_files=str(out), split="train")
    assert loaded.num_rows == len(ROWS)
    if fmt == "sharegpt":
        turns = loaded[0]["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"]
    else:
        assert {"instruction", "input", "output"} <= set(loaded.column_names)
    if fmt == "alpaca":
        rows = json.loads(out.read_text())
        assert isinstance(rows, list) and set(rows[0]) == {"instruction", "input", "output"}
    info = json.loads((out.parent / "dataset_info.json").read_text())
    assert info["tagged_recycled"]["file_name"] == out.name
    assert info["tagged_recycled"]["formatting"] == ("sharegpt" if fmt == "sharegpt" else "alpaca")


def test_export_raw_keeps_inputs_and_other_entries(recycled, tmp_path):
    folder = tmp_path / "llamafactory"
    assert main(["export", "tagged", "--format", "alpaca", "--out", str(folder / "recycled.json")]) == 0
    assert main(["export", "tagged", "--stage", "raw", "--format", "alpaca", "--out", str(folder / "raw.json")]) == 0
    raw = json.loads((folder / "raw.json").read_text())
    assert raw[0] == {"instruction": "Plain task 0", "input": "some context", "output": "answer 0"}
    assert set(json.loads((folder / "dataset_info.json").read_text())) == {"tagged_recycled", "tagged_raw"}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_stage_exports_show_each_records_outcome(recycled, tmp_path, capsys, fmt):
    import polars as pl

    # phase 2 reflects each record twice: the chain's pair and (also_original, the default) the original
    for stage, rows in (("reflected_instructions", len(ROWS)), ("reflected_responses", 2 * len(ROWS))):
        out = tmp_path / f"{stage}.{fmt}"
        assert main(["export", "tagged", "--stage", stage, "--format", fmt, "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        assert f"wrote {rows} rows" in printed and "LLaMA-Factory" not in printed
        frame = pl.read_parquet(out) if fmt == "parquet" else pl.read_ndjson(out)
        assert frame.columns == ["record_id", "variant", "outcome", "reason", "instruction", "input", "output"]
        assert frame.height == rows
        by_outcome = dict(frame.group_by("outcome").len().iter_rows())
        if stage == "reflected_instructions":
            assert set(frame["variant"]) == {"instruction"}
            assert by_outcome["missing_marker"] == 1 and by_outcome["oracle_error"] == 1
            kept = frame.filter(pl.col("outcome") == "missing_marker").row(0, named=True)
            assert kept["instruction"] == "Name a color #missing" and kept["output"] == "Red"
            assert kept["reason"].startswith("kept the original pair")
            new = frame.filter(pl.col("instruction").str.contains("Plain task 1 Explain")).row(0, named=True)
            assert new["outcome"] == "ok" and new["input"] == ""
        else:
            assert set(frame["variant"]) == {"chain", "original"}
            assert frame.filter(pl.col("outcome") == "ok")["output"].str.starts_with("A better answer").all()
    assert not (tmp_path / "dataset_info.json").exists()
    bad = main(["export", "tagged", "--stage", "reflected_responses", "--format", "alpaca", "--out", str(tmp_path / "x")])
    assert bad == 2 and "expected one of jsonl, parquet" in capsys.readouterr().err


def test_dpo_export_holds_a_pair_per_rewritten_answer(recycled, tmp_path, capsys):
    import duckdb

    with duckdb.connect(str(recycled / "reflection.duckdb"), read_only=True) as con:
        rewritten = con.execute(
            "SELECT count(DISTINCT record_id) FROM reflect.responses WHERE dataset = 'tagged' "
            "AND base = 'original' AND replaced"
        ).fetchone()[0]
        originals = dict(con.execute(
            "SELECT record_id, output FROM raw.records WHERE dataset = 'tagged'").fetchall())
    out = tmp_path / "dpo" / "tagged.jsonl"
    assert main(["export", "tagged", "--format", "dpo", "--out", str(out)]) == 0
    assert f"wrote {rewritten} preference pairs" in capsys.readouterr().out
    loaded = datasets.load_dataset("json", data_files=str(out), split="train")
    assert 0 < loaded.num_rows == rewritten <= len(ROWS)
    assert loaded.column_names == ["prompt", "chosen", "rejected", "record_id", "variant"]
    assert all(row["chosen"] != row["rejected"] for row in loaded)
    assert all(row["rejected"] == originals[row["record_id"]] for row in loaded)
    assert all(row["chosen"].startswith("A better answer") for row in loaded)
    with_input = [row for row in loaded if row["prompt"].startswith("Plain task 0")]
    assert with_input and with_input[0]["prompt"] == "Plain task 0\n\nsome context"  # as the student's template joins them
    info = json.loads((out.parent / "dataset_info.json").read_text())
    assert info["tagged_recycled_dpo"] == {
        "file_name": "tagged.jsonl", "ranking": True,
        "columns": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"},
    }
    assert main(["export", "tagged", "--stage", "raw", "--format", "dpo", "--out", str(tmp_path / "x")]) == 2
    assert "preference pairs come from recycled or selective" in capsys.readouterr().err


def test_export_before_recycling_says_what_to_run(tagged, tmp_path, capsys):  # noqa: F811
    assert main(["export", "tagged", "--format", "jsonl", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "materialize recycled_dataset first" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_lineage_prints_the_chain_of_one_record(recycled, capsys):
    import duckdb

    with duckdb.connect(str(recycled / "reflection.duckdb")) as con:
        [(record_id, key)] = con.execute(
            "SELECT i.record_id, i.repair_key FROM reflect.instructions i JOIN raw.records r USING (dataset, record_id) "
            "WHERE r.instruction = 'Name a fruit #fixable'"
        ).fetchall()
    assert main(["lineage", record_id[:8]]) == 0
    out = capsys.readouterr().out
    assert f"record {record_id} in dataset tagged" in out
    assert "tagged.json, row 15" in out and "Name a fruit #fixable" in out
    assert "instruction repair" in out and key[:16] in out and "gpt-4o-mini, fingerprint" in out
    assert "failed; repaired by the follow-up" in out and "response (chain)" in out
    assert "recycled (chain mode): both" in out
    assert main(["lineage", "ffffffffff"]) == 2
    assert "no record 'ffffffffff'" in capsys.readouterr().err
