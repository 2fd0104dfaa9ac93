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
