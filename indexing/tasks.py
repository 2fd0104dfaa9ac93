"""Task-queue entry points: take ids, call a service."""

from __future__ import annotations

from indexing import services
from indexing.services import builds_fail_stale, index_build_run


def index_builds_run(build_ids: list[int]) -> dict[int, str]:
    """Run the given builds one after another; returns each build's final status. Their images
    to embed are shared out in chunks to every worker on the broker."""
    return {build_id: index_build_run(build_id=build_id, distributed=True).status for build_id in build_ids}


def build_chunks_run(build_id: int) -> int:
    """Embed pending chunks of a running build (any worker, any host)."""
    return services.build_chunks_run(build_id=build_id)


def fail_stale_builds() -> int:
    return builds_fail_stale()
