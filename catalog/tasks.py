"""Task-queue entry points for the catalog."""

from __future__ import annotations

from catalog.services import temp_images_purge


def purge_expired_temp_images() -> int:
    return temp_images_purge()
