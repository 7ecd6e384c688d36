"""raw_dataset materialized through Dagster on a temporary DuckDB file and instance."""

from pathlib import Path

import dagster as dg
import duckdb

from reflection_assets.assets.partitions import SHARD_COUNT
from reflection_assets.assets.resources import StorageResource
from reflection_assets.definitions import JOB_FOR_PARTITIONS, RECORD_PARTITIONS, defs
from reflection_assets.headless.runner import run_record_partitions, sync_dataset_partitions
from tests.conftest import alpaca_rows, write_json

RAW = dg.AssetKey("raw_dataset")


def register(instance, name: str, source: Path, **kw) -> None:
    StorageResource().registry().add(name, str(source), **kw)
    sync_dataset_partitions(instance, [name])


def materialize(instance, name: str, shards=None, **kw):
    return run_record_partitions(
        instance, defs, JOB_FOR_PARTITIONS[RECORD_PARTITIONS], [RAW], name, shards, "WARNING", **kw
    )


def query(home: Path, sql: str, params=()):
    with duckdb.connect(str(home / "reflection.duckdb")) as con:
        return con.execute(sql, list(params)).fetchall()


def table_counts(home: Path) -> tuple:
    return tuple(
        query(home, f"SELECT count(*) FROM raw.{t}")[0][0]
        for t in ("source_versions", "source_rows", "shard_versions")
    )


def test_rows_and_rejects_land_in_their_tables(home, instance, tmp_path):
    rows = alpaca_rows(40) + [
        {"instruction": "", "output": "no instruction"},
        {"instruction": "no output"},
        {"instruction": "numeric", "output": 7},
        alpaca_rows(1)[0],  # a duplicate of row 1
    ]
    register(instance, "mini", write_json(tmp_path / "mini.json", rows))
    outcomes = materialize(instance, "mini")
    assert len(outcomes) == SHARD_COUNT and all(o.success for o in outcomes)
    assert sum(o.rows["raw_dataset"] for o in outcomes) == 40

    assert query(home, "SELECT count(*), count(DISTINCT record_id) FROM raw.records") == [(40, 40)]
    rejects = dict(query(home, "SELECT reason, count(*) FROM raw.rejects GROUP BY reason"))
    assert rejects == {"missing_instruction": 1, "missing_response": 1, "not_text": 1, "duplicate": 1}
    assert query(home, "SELECT source_row, detail FROM raw.rejects WHERE reason='duplicate'") == [
        (44, "same record as row 1")
    ]
    assert query(home, "SELECT source_file, input FROM raw.records WHERE source_row = 1") == [
        (str(tmp_path / "mini.json"), "context for item 0")
    ]


def test_materialization_metadata_and_checks(home, instance, tmp_path):
    rows = alpaca_rows(30) + [{"instruction": f"empty {i}", "output": ""} for i in range(30)]
    register(instance, "half", write_json(tmp_path / "half.json", rows))
    outcomes = materialize(instance, "half", asset_config={"raw_dataset": {"max_reject_share": 0.2}})
    # half the rows are unusable: the reject_share check fails on shards that hold any
    assert any(o.failed_checks == ["raw_dataset:reject_share"] for o in outcomes)
    total_rows = total_rejects = 0
    for record in instance.fetch_materializations(RAW, limit=100).records:
        md = record.asset_materialization.metadata
        total_rows += md["dagster/row_count"].value
        total_rejects += sum(md["rejects_by_reason"].value.values())
        assert {"preview", "length_stats", "source_sha256", "reject_share"} <= set(md)
        preview = md["preview"]  # Dagster table metadata, one record per previewed row
        assert isinstance(preview, dg.TableMetadataValue) and len(preview.records) <= 5
        assert {"record_id", "instruction"} <= {column.name for column in preview.schema.columns}
        assert all(len(r.data["instruction"]) <= 80 for r in preview.records if r.data["instruction"])
    assert (total_rows, total_rejects) == (30, 30)
    lenient = materialize(instance, "half", asset_config={"raw_dataset": {"max_reject_share": 1.0}})
    assert all(o.failed_checks == [] for o in lenient)


def test_one_shard_only_touches_that_shard(home, instance, tmp_path):
    register(instance, "mini", write_json(tmp_path / "mini.json", alpaca_rows(50)))
    materialize(instance, "mini", shards=["03"])
    assert query(home, "SELECT DISTINCT shard FROM raw.records") == [(3,)]
    assert query(home, "SELECT shard FROM raw.shard_versions") == [(3,)]


def test_3000_alpaca_records_ingest_completely_and_stably(home, instance, tmp_path):
    register(instance, "big", write_json(tmp_path / "big.json", alpaca_rows(3000)))
    assert all(o.success for o in materialize(instance, "big"))
    first = query(home, "SELECT record_id, shard, source_row FROM raw.records ORDER BY record_id")
    assert len(first) == 3000
    assert query(home, "SELECT count(*) FROM raw.records WHERE input <> ''") == [(1000,)]
    assert all(o.success for o in materialize(instance, "big"))
    assert query(home, "SELECT record_id, shard, source_row FROM raw.records ORDER BY record_id") == first
    assert table_counts(home)[0] == 1  # the second run re-used the parsed version


def test_unparseable_file_fails_and_writes_nothing(home, instance, tmp_path):
    source = tmp_path / "broken.json"
    source.write_text('[{"instruction": "a", "output": "b"},\n {"instruction": ]')
    register(instance, "broken", source)
    outcomes = materialize(instance, "broken", shards=["00"])
    assert not outcomes[0].success
    assert f"{source}: line 2, column" in outcomes[0].error and "not valid JSON" in outcomes[0].error
    assert table_counts(home) == (0, 0, 0)


def test_a_broken_new_version_keeps_the_stored_rows(home, instance, tmp_path):
    source = write_json(tmp_path / "data.json", alpaca_rows(20))
    register(instance, "data", source)
    assert all(o.success for o in materialize(instance, "data"))
    before = query(home, "SELECT * FROM raw.records ORDER BY record_id")
    counts = table_counts(home)
    source.write_text('[{"instruction": "x", "output": "y"}, oops]')
    outcomes = materialize(instance, "data")
    assert not any(o.success for o in outcomes)
    assert "line 1, column" in outcomes[0].error
    assert query(home, "SELECT * FROM raw.records ORDER BY record_id") == before
    assert table_counts(home) == counts


def test_source_deleted_after_registration(home, instance, tmp_path):
    source = write_json(tmp_path / "gone.json", alpaca_rows(3))
    register(instance, "gone", source)
    source.unlink()
    [outcome] = materialize(instance, "gone", shards=["00"])
    assert not outcome.success and f"{source}: no such file or folder" in outcome.error
    assert table_counts(home) == (0, 0, 0)


def test_an_edited_source_becomes_a_new_version(home, instance, tmp_path):
    rows = alpaca_rows(20)
    source = write_json(tmp_path / "data.json", rows)
    register(instance, "data", source)
    materialize(instance, "data")
    rows[0]["output"] = "a corrected answer"
    write_json(source, rows)
    materialize(instance, "data")
    assert query(home, "SELECT count(*) FROM raw.source_versions") == [(2,)]
    assert query(home, "SELECT count(*) FROM raw.records WHERE output = 'a corrected answer'") == [(1,)]
    assert query(home, "SELECT count(*) FROM raw.records") == [(20,)]


def test_a_limit_takes_the_first_rows_and_a_new_limit_is_a_new_version(home, instance, tmp_path):
    from reflection_assets.engines.data.datasets import DatasetError

    rows = alpaca_rows(30)
    source = write_json(tmp_path / "data.json", rows)
    register(instance, "data", source)
    assert all(o.success for o in materialize(instance, "data"))
    version_without = query(home, "SELECT version FROM raw.source_versions")

    # The same name with a limit is refused until --replace says so, and names what it has.
    registry = StorageResource().registry()
    try:
        registry.add("data", str(source), limit=12)
        raise AssertionError("a changed limit was accepted without --replace")
    except DatasetError as exc:
        assert "already registered" in str(exc) and "--replace" in str(exc)
    for bad in (0, -3):
        try:
            registry.add("other", str(source), limit=bad)
            raise AssertionError(f"limit {bad} was accepted")
        except DatasetError as exc:
            assert f"--limit {bad}: expected a number of rows from 1 up" in str(exc)

    register(instance, "data", source, limit=12, replace=True)
    assert registry.get("data").limit == 12
    assert all(o.success for o in materialize(instance, "data"))
    assert query(home, "SELECT count(*), max(source_row) FROM raw.records") == [(12, 12)]
    assert {i for (i,) in query(home, "SELECT instruction FROM raw.records")} == {r["instruction"] for r in rows[:12]}
    assert query(home, "SELECT count(*) FROM raw.source_versions") == [(2,)]

    # Back to the whole file: the first version's rows come back, nothing re-parsed.
    register(instance, "data", source, replace=True)
    assert all(o.success for o in materialize(instance, "data"))
    assert query(home, "SELECT count(*) FROM raw.records") == [(30,)]
    assert query(home, "SELECT count(*) FROM raw.source_versions") == [(2,)]
    assert version_without[0] in query(home, "SELECT version FROM raw.source_versions")
