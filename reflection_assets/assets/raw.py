"""raw_dataset: one shard of a registered dataset, normalized, with rejects set aside."""


import dagster as dg

from reflection_assets.assets.failures import user_errors_fail_the_step
from reflection_assets.assets.metadata import column_schema, preview_table
from reflection_assets.assets.partitions import RECORD_PARTITIONS, SHARD_COUNT, dataset_and_shard
from reflection_assets.assets.resources import OWNER, StorageResource, step_pool
from reflection_assets.engines.data.ingest import point_shard, shard_fingerprint, shard_summary, stage_version
from reflection_assets.method.records import DEFAULT_MAX_RECORD_CHARS, RejectReason

RAW_COLUMNS = column_schema(
    {
        "record_id": ("string", "sha256 of the normalized instruction, input and output (16 hex)"),
        "instruction": ("string", "the task, NFC-normalized, LF line endings, trimmed"),
        "input": ("string", "the Alpaca `input`/context, kept apart from the instruction"),
        "output": ("string", "the response"),
        "source_file": ("string", "the file the row came from"),
        "source_row": ("int64", "1-based record position (JSON Lines: line number)"),
    }
)


class RawDatasetConfig(dg.Config):
    max_record_chars: int = DEFAULT_MAX_RECORD_CHARS
    """Rows whose instruction, input and output together exceed this are rejected."""
    max_reject_share: float = 0.2
    """The reject_share check fails above this share of unusable rows (duplicates excluded)."""


@dg.asset(
    partitions_def=RECORD_PARTITIONS,
    pool=step_pool(runs_model=False),
    group_name="ingest",
    kinds={"duckdb", "polars"},
    owners=[OWNER],
    tags={"stage": "raw"},
    code_version="1",
    check_specs=[
        dg.AssetCheckSpec(
            "reject_share",
            asset="raw_dataset",
            description="Unusable rows (missing fields, not text, too long, undecodable) "
            "stay under max_reject_share of the shard.",
        )
    ],
)
def raw_dataset(
    context: dg.AssetExecutionContext, config: RawDatasetConfig, storage: StorageResource
) -> dg.MaterializeResult:
    """The instruction/response pairs of one shard of a registered dataset, as read from
    its source: normalized (NFC, LF, trimmed), `input` kept apart from `instruction`, exact
    duplicates dropped. Rows that cannot be used go to raw.rejects with file, row and
    reason. Tables: raw.records, raw.rejects (DuckDB)."""
    dataset, shard = dataset_and_shard(context)
    db = storage.db()
    with user_errors_fail_the_step():
        spec = storage.registry().get(dataset)
        # Parses the source outside the store when this version is new (it can take minutes).
        staged = stage_version(db, spec, SHARD_COUNT, config.max_record_chars)
    with db.held():  # the store only: one open for the pointer, the summary and the fingerprint
        point_shard(db, dataset, shard, staged.version)
        summary = shard_summary(db, dataset, shard)
        fingerprint = shard_fingerprint(db, dataset, shard)
    if staged.parsed_now:
        context.log.info(f"parsed {staged.rows_read} rows of {staged.source_path}")
    share = summary.reject_share
    check = dg.AssetCheckResult(
        check_name="reject_share",
        passed=share <= config.max_reject_share,
        metadata={"reject_share": share, "max_reject_share": config.max_reject_share},
        description=f"{share:.1%} of rows unusable (limit {config.max_reject_share:.0%})",
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": summary.rows,
            "dagster/column_schema": RAW_COLUMNS,
            "rows_considered": summary.rows_considered,
            "duplicates": summary.rejects.get(RejectReason.DUPLICATE, 0),
            "rejects_by_reason": summary.rejects,
            "reject_share": share,
            "length_stats": summary.length_stats,
            "source": dg.MetadataValue.path(staged.source_path),
            "source_sha256": staged.source_sha256,
            "source_version": staged.version,
            "preview": preview_table(summary.preview),
            "rejects_preview": preview_table(summary.reject_preview),
        },
        check_results=[check],
        data_version=dg.DataVersion(fingerprint),
    )
