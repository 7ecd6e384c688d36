"""`reflection datasets` and `reflection testsets`: register sources and test sets by name."""

from __future__ import annotations

import argparse

from reflection_assets.cli.common import storage_resource
from reflection_assets.engines.data.datasets import parse_field_map


def cmd_datasets_add(args: argparse.Namespace) -> int:
    from reflection_assets.dagster_instance import ensure_instance
    from reflection_assets.headless.runner import sync_dataset_partitions

    registry = storage_resource().registry()
    spec = registry.add(
        args.name, args.source, args.format, parse_field_map(args.field or []), args.replace, args.limit
    )
    sync_dataset_partitions(ensure_instance(), [spec.name])
    print(f"dataset {spec.name}: {spec.source}" + (f" ({spec.format})" if spec.format else "")
          + (f", its first {spec.limit} rows" if spec.limit else ""))
    return 0


def cmd_datasets_list(args: argparse.Namespace) -> int:
    specs = storage_resource().registry().list()
    if not specs:
        print("no datasets registered; add one with `reflection datasets add NAME SOURCE`")
        return 0
    width = max(len(s.name) for s in specs)
    for spec in specs:
        extra = f"  format={spec.format}" if spec.format else ""
        extra += f"  fields={spec.field_map}" if spec.field_map else ""
        extra += f"  limit={spec.limit}" if spec.limit else ""
        print(f"{spec.name:<{width}}  {spec.source}{extra}")
    return 0


def cmd_testsets_add(args: argparse.Namespace) -> int:
    from reflection_assets.engines.benchmark.testsets import TestsetRegistry

    spec, count = TestsetRegistry(storage_resource().db()).add(args.name, args.source, args.format)
    print(f"test set {spec.name}: {count} prompts from {spec.source}" + (f" ({spec.format})" if spec.format else ""))
    return 0


def cmd_testsets_list(args: argparse.Namespace) -> int:
    from reflection_assets.engines.benchmark.testsets import TestsetRegistry

    specs = TestsetRegistry(storage_resource().db()).list()
    width = max(len(s.name) for s in specs)
    for spec in specs:
        print(f"{spec.name:<{width}}  {spec.source}" + (f"  format={spec.format}" if spec.format else ""))
    return 0
