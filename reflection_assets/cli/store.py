"""`reflection doctor` and `reflection rebuild`: is the store whole, and the way back when
it is not (engines/store/recovery.py)."""

from __future__ import annotations

import argparse

from reflection_assets.cli.common import storage_resource
from reflection_assets.errors import UserError


def add_parser(sub) -> None:
    doctor = sub.add_parser(
        "doctor", help="read every table of the store and every segment of its ledger: exit 0 if the store is whole"
    )
    doctor.add_argument(
        "--backfill", action="store_true",
        help="copy into the ledger what the store holds and the ledger does not (a store made before the ledger existed)",
    )
    doctor.set_defaults(func=cmd_doctor)
    rebuild = sub.add_parser(
        "rebuild", help="move a damaged (or missing) store aside and make a new one from its ledger: registries, replies, batches"
    )
    rebuild.add_argument("--force", action="store_true", help="rebuild even when `reflection doctor` finds the store whole")
    rebuild.set_defaults(func=cmd_rebuild)


def cmd_doctor(args: argparse.Namespace) -> int:
    from reflection_assets.engines.store.recovery import doctor

    checkup = doctor(storage_resource().db(), backfill=args.backfill)
    print("\n".join(checkup.lines))
    return 0 if checkup.healthy else 1


def cmd_rebuild(args: argparse.Namespace) -> int:
    from reflection_assets.dagster_instance import ensure_instance
    from reflection_assets.engines.store.recovery import RECOMPUTED, doctor, rebuild
    from reflection_assets.headless.runner import sync_dataset_partitions

    db = storage_resource().db()
    if not args.force and doctor(db).healthy:
        raise UserError(
            f"{db.path}: whole (`reflection doctor` read every table): nothing to rebuild; "
            "--force makes a new store from the ledger anyway"
        )
    result = rebuild(db)
    for path in result.moved_aside:
        print(f"moved aside (kept): {path}")
    print(f"new store {db.path}, restored from {db.ledger().folder}:")
    for table, count in result.restored.items():
        print(f"  {table}: {count} rows")
    for torn in result.torn:
        print(f"  ledger {torn} (every other line was restored)")
    sync_dataset_partitions(ensure_instance(), result.datasets)
    print("to compute again, locally (nothing here is paid):")
    for item in RECOMPUTED:
        print(f"  {item}")
    names = " ".join(result.datasets) or "NAME"
    print(f"materialize them with `reflection run --dataset NAME` for each dataset ({names})")
    return 0
