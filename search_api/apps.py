from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate
from django.utils.translation import gettext_lazy as _

SEARCH_LOG_SCHEDULE = "simsearch: purge old search history"
ANOMALY_RESULTS_SCHEDULE = "simsearch: purge expired anomaly results"


def ensure_schedules(**kwargs: Any) -> None:
    """Create the history and anomaly-result purges by name, idempotently (re-running migrate changes nothing)."""
    from django_q.models import Schedule

    Schedule.objects.update_or_create(
        name=SEARCH_LOG_SCHEDULE,
        defaults={"func": "search_api.tasks.purge_search_log", "schedule_type": Schedule.DAILY, "repeats": -1},
    )
    # Results expire after SIMSEARCH_RESULT_TTL_SECONDS; an hourly sweep keeps them at most an hour longer.
    Schedule.objects.update_or_create(
        name=ANOMALY_RESULTS_SCHEDULE,
        defaults={
            "func": "search_api.tasks.purge_anomaly_results",
            "schedule_type": Schedule.HOURLY,
            "repeats": -1,
        },
    )


class SearchApiConfig(AppConfig):
    name = "search_api"
    verbose_name = _("Search API")

    def ready(self) -> None:
        # Only wiring: revoked credentials leave the outage cache of the token authentication,
        # and the history purge is scheduled after migrate.
        from simsearch_project import credential_cache

        credential_cache.connect_signals()
        post_migrate.connect(ensure_schedules, sender=self)
