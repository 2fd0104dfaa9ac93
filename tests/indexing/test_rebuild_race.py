"""A rebuild request that races the completion of the pending build of the same type."""

from __future__ import annotations

import threading

import pytest
from django.db import IntegrityError, connection, connections

from indexing.models import BuildStatus, IndexBuild
from indexing.services import index_build_request


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    connection.vendor == "sqlite",
    reason="SQLite lets one writer in at a time: the pending build cannot finish mid-request there",
)
def test_request_that_loses_the_pending_slot_to_a_finishing_build_queues_a_new_one():
    """The insert is refused because a build is pending; that build then finishes (committed by
    another connection) before the request looks for it. Before the fix: DoesNotExist, a 500."""
    (pending,) = index_build_request(index_type="defect", enqueue=False)

    def finish_pending_build() -> None:
        try:
            IndexBuild.objects.filter(pk=pending.pk).update(status=BuildStatus.READY)
        finally:
            connections.close_all()

    def finish_after_refused_insert(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        try:
            return execute(sql, params, many, context)
        except IntegrityError:
            if sql.startswith('INSERT INTO "indexing_indexbuild"'):
                other = threading.Thread(target=finish_pending_build)
                other.start()
                other.join()
            raise

    with connection.execute_wrapper(finish_after_refused_insert):
        (build,) = index_build_request(index_type="defect", enqueue=False)
    assert build.pk != pending.pk and build.newly_queued and build.status == BuildStatus.QUEUED
    assert IndexBuild.objects.get(pk=pending.pk).status == BuildStatus.READY
