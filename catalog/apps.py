from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate
from django.utils.translation import gettext_lazy as _

PURGE_SCHEDULE = "simsearch: purge expired temporary images"


def ensure_schedules(**kwargs: Any) -> None:
    """Create the periodic purge by name, idempotently (re-running migrate changes nothing)."""
    from django_q.models import Schedule

    Schedule.objects.update_or_create(
        name=PURGE_SCHEDULE,
        defaults={
            "func": "catalog.tasks.purge_expired_temp_images",
            "schedule_type": Schedule.MINUTES,
            "minutes": 15,
            "repeats": -1,
        },
    )


class CatalogConfig(AppConfig):
    name = "catalog"
    verbose_name = _("Catalog")

    def ready(self) -> None:
        post_migrate.connect(ensure_schedules, sender=self)
