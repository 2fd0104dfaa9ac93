"""Task-queue entry points for the search API."""

from __future__ import annotations

from search_api.services import search_log_purge


def purge_search_log() -> int:
    return search_log_purge()
