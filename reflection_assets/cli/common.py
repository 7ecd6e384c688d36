"""What the command handlers share."""

from __future__ import annotations


def storage_resource():
    from reflection_assets.assets.resources import StorageResource

    return StorageResource()
