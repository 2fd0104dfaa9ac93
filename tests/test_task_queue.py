"""The django-q2 set-up works with a real qcluster process on the configured broker."""

from __future__ import annotations

import os

from django.conf import settings
from django_q.brokers import get_broker
from django_q.tasks import async_task, fetch, result


def test_broker_follows_redis_url(db) -> None:
    broker = type(get_broker()).__name__
    assert broker == ("Redis" if os.environ.get("REDIS_URL") else "ORM")
    # Long builds must never be handed out twice or retried forever.
    assert settings.Q_CLUSTER["retry"] > settings.Q_CLUSTER["timeout"]
    assert settings.Q_CLUSTER["max_attempts"] == 1


def test_a_real_qcluster_runs_a_queued_task(qcluster) -> None:
    task_id = async_task("math.copysign", 3, -1)
    assert result(task_id, wait=60_000) == -3.0, "the qcluster did not run the task within 60 s"
    task = fetch(task_id)
    assert task is not None and task.success


def test_a_real_qcluster_runs_both_periodic_schedules(transactional_db, tmp_path, product) -> None:
    """The schedules that migrate creates, fired by django-q2's own scheduler and executed by a
    real qcluster: the purge deletes an expired temporary image (row and object), the sweep fails a
    build whose worker stopped reporting."""
    from datetime import timedelta

    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage
    from django.utils import timezone
    from django_q.models import Schedule
    from django_q.scheduler import scheduler

    from catalog.apps import PURGE_SCHEDULE
    from catalog.models import Image
    from catalog.services import temp_image_register
    from indexing.apps import STALE_BUILD_SCHEDULE
    from indexing.models import BuildStatus, IndexBuild
    from tests.conftest import running_qcluster
    from tests.helpers import image_bytes, wait_until

    key = default_storage.save("line-7/query.png", ContentFile(image_bytes("PNG", seed=9)))
    temp = temp_image_register(storage_key=key, product=product, defect_type=None, ttl_seconds=3600)
    Image.objects.filter(pk=temp.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    kept = temp_image_register(
        storage_key=default_storage.save("line-7/later.png", ContentFile(image_bytes("PNG", seed=10))),
        product=product,
        defect_type=None,
        ttl_seconds=3600,
    )
    long_ago = timezone.now() - timedelta(hours=2)
    stale = IndexBuild.objects.create(
        image_type="defect",
        status=BuildStatus.RUNNING,
        model_name="simsearch-tiny",
        pretrained="untrained",
        worker="another-host:4242",
        started_at=long_ago,
        heartbeat_at=long_ago,
    )
    Schedule.objects.filter(name__in=[PURGE_SCHEDULE, STALE_BUILD_SCHEDULE]).update(
        next_run=timezone.now() - timedelta(seconds=1)
    )
    scheduler(broker=get_broker())  # what the cluster's guard does every 30 s: queue what is due
    with running_qcluster(tmp_path / "qcluster.log"):
        wait_until(lambda: not Image.objects.filter(pk=temp.pk).exists(), timeout=60)
        wait_until(lambda: IndexBuild.objects.get(pk=stale.pk).status == BuildStatus.FAILED, timeout=60)
    assert not default_storage.exists(key)
    assert Image.objects.filter(pk=kept.pk).exists() and default_storage.exists(kept.file.name)
    assert "stopped reporting" in IndexBuild.objects.get(pk=stale.pk).error
