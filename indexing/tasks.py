"""Task-queue entry points: take ids, call a service."""

from __future__ import annotations

from indexing.services import builds_fail_stale, index_build_run


def index_builds_run(build_ids: list[int]) -> dict[int, str]:
    """Run the given builds one after another; returns each build's final status."""
    return {build_id: index_build_run(build_id=build_id).status for build_id in build_ids}


def fail_stale_builds() -> int:
    return builds_fail_stale()
