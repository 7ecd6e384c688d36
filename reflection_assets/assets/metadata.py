"""Turning engine results into the Dagster metadata a person looks at first."""

from __future__ import annotations

import base64
from pathlib import Path

import dagster as dg
import polars as pl

from reflection_assets.engines.data.lineage import one_line


# Polars dtypes by the type names Dagster's table metadata shows.
_TYPES = {"String": "string", "Boolean": "bool", "Float32": "float", "Float64": "float", "Date": "date",
          "Datetime": "datetime"}


def _table_type(dtype: pl.DataType) -> str:
    name = dtype.base_type().__name__
    return "int" if dtype.is_integer() else _TYPES.get(name, name.lower())


def _value(value: object, width: int) -> object:
    """A table cell: numbers, booleans and nulls as they are; anything else as one line of
    text of at most `width` characters."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return one_line(value, width)


def preview_table(frame: pl.DataFrame, width: int = 80) -> dg.MetadataValue:
    """A preview as Dagster table metadata (MetadataValue.table), its columns typed from the
    frame's; long texts are cut to `width` characters, line breaks shown as ⏎."""
    schema = dg.TableSchema(columns=[dg.TableColumn(name, _table_type(dtype)) for name, dtype in frame.schema.items()])
    records = [dg.TableRecord({k: _value(v, width) for k, v in row.items()}) for row in frame.iter_rows(named=True)]
    return dg.MetadataValue.table(records, schema)


def column_schema(columns: dict[str, tuple[str, str]]) -> dg.TableSchema:
    """{'name': ('type', 'description')} -> TableSchema for dagster/column_schema."""
    return dg.TableSchema(
        columns=[dg.TableColumn(name, kind, description=desc) for name, (kind, desc) in columns.items()]
    )


def png_markdown(path: Path, alt: str) -> dg.MetadataValue:
    """A PNG inline in markdown metadata: the UI shows the picture itself."""
    encoded = base64.b64encode(path.read_bytes()).decode()
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{encoded})")
