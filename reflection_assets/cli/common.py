"""What the command handlers share."""

from __future__ import annotations


def storage_resource():
    """The store, as the definitions' `storage` resource gives it to the runs."""
    from reflection_assets.definitions import resource

    return resource("storage")
