"""Turning engine results into the Dagster metadata a person looks at first."""

from __future__ import annotations

import base64
from pathlib import Path

import dagster as dg
import polars as pl


def one_line(value: object, width: int = 100) -> str:
    """Text on one line (breaks shown as ⏎), cut to `width` characters."""
    text = "" if value is None else str(value).replace("\n", " ⏎ ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _cell(value: object, width: int) -> str:
    return one_line(value, width).replace("|", "\\|")


def markdown_table(frame: pl.DataFrame, width: int = 80) -> dg.MetadataValue:
    """A preview table; long texts are cut to `width` characters, line breaks shown as ⏎."""
    if frame.is_empty():
        return dg.MetadataValue.md("_no rows_")
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    for row in frame.iter_rows():
        lines.append("| " + " | ".join(_cell(v, width) for v in row) + " |")
    return dg.MetadataValue.md("\n".join(lines))


def column_schema(columns: dict[str, tuple[str, str]]) -> dg.TableSchema:
    """{'name': ('type', 'description')} -> TableSchema for dagster/column_schema."""
    return dg.TableSchema(
        columns=[dg.TableColumn(name, kind, description=desc) for name, (kind, desc) in columns.items()]
    )


def png_markdown(path: Path, alt: str) -> dg.MetadataValue:
    """A PNG inline in markdown metadata: the UI shows the picture itself."""
    encoded = base64.b64encode(path.read_bytes()).decode()
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{encoded})")
