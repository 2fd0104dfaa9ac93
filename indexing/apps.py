from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate
from django.utils.translation import gettext_lazy as _

STALE_BUILD_SCHEDULE = "simsearch: fail stale index builds"


def ensure_schedules(**kwargs: Any) -> None:
    """Create the periodic tasks by name, idempotently (re-running migrate changes nothing)."""
    from django_q.models import Schedule

    Schedule.objects.update_or_create(
        name=STALE_BUILD_SCHEDULE,
        defaults={
            "func": "indexing.tasks.fail_stale_builds",
            "schedule_type": Schedule.MINUTES,
            "minutes": 5,
            "repeats": -1,
        },
    )


class IndexingConfig(AppConfig):
    name = "indexing"
    verbose_name = _("Indexing")

    def ready(self) -> None:
        # Only wiring here: no model or index is loaded at start-up (torch + fork = hangs).
        post_migrate.connect(ensure_schedules, sender=self)
