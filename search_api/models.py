from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _


class QueryKind(models.TextChoices):
    UPLOAD = "upload", _("Uploaded photo")
    IMAGE_ID = "image_id", _("Catalog image")
    STORAGE_URL = "storage_url", _("Storage URL")
    TEXT = "text", _("Text")
    # An anomaly check (any input; the input kind is in the row's filters).
    ANOMALY = "anomaly", _("Anomaly check")


class SearchSource(models.TextChoices):
    API = "api", _("API")
    CONSOLE = "console", _("Admin console")


class SearchLog(models.Model):
    """One search, as it was asked and answered. An uploaded photo is kept as its content hash,
    never its bytes. Rows older than SIMSEARCH_SEARCH_LOG_DAYS are purged by a schedule."""

    created_at = models.DateTimeField(_("created at"), auto_now_add=True, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, verbose_name=_("user")
    )
    source = models.CharField(_("source"), max_length=16, choices=SearchSource.choices, default=SearchSource.API)
    query_kind = models.CharField(_("query kind"), max_length=16, choices=QueryKind.choices, db_index=True)
    query_ref = models.CharField(
        _("query"),
        max_length=600,
        help_text=_("sha256 of an uploaded photo, the catalog image id, the storage key or the text."),
    )
    image_type = models.CharField(_("image type"), max_length=16)
    filters = models.JSONField(
        _("filters"), default=dict, blank=True, help_text=_("top_k, product_code, defect_code, ...")
    )
    engine = models.CharField(_("engine"), max_length=4)
    build_id = models.PositiveIntegerField(
        _("build id"), null=True, blank=True, help_text=_("The index build that answered.")
    )
    result_ids = models.JSONField(
        _("result ids"), default=list, blank=True, help_text=_("Image ids (V2) or paths (V1), best first.")
    )
    scores = models.JSONField(_("scores"), default=list, blank=True)
    latency_ms = models.FloatField(_("latency (ms)"))

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = _("search log")
        verbose_name_plural = _("search logs")

    def __str__(self) -> str:
        return gettext("Search %(id)s (%(query_kind)s, %(created_at)s)") % {
            "id": self.pk,
            "query_kind": self.query_kind,
            "created_at": f"{self.created_at:%Y-%m-%d %H:%M}",
        }
