"""Task-queue entry points for the search API."""

from __future__ import annotations

from search_api.services import anomaly_results_purge, search_log_purge


def purge_search_log() -> int:
    return search_log_purge()


def purge_anomaly_results() -> int:
    return anomaly_results_purge()
