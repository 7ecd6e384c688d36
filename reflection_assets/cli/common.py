"""What the command handlers share."""

from __future__ import annotations

from dataclasses import dataclass

from reflection_assets.engines.data.datasets import DatasetRegistry
from reflection_assets.engines.store.location import StoreLocation


@dataclass(frozen=True)
class CommandStore(StoreLocation):
    """The store's location with its dataset registry, as StorageResource gives both."""

    def registry(self) -> DatasetRegistry:
        return DatasetRegistry(self.db())


def storage_resource() -> CommandStore:
    """The store, where the definitions' `storage` resource finds it for the runs: the code
    location builds that resource from REFLECTION_DUCKDB and REFLECTION_ARTIFACTS alone, so
    its fields are what StoreLocation reads from the environment (tests/unit/test_settings.py
    holds them equal). Without Dagster: a command that only reads or writes the store does not
    import it and the definitions."""
    return CommandStore()
