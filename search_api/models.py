from __future__ import annotations

from django.conf import settings
from django.db import models


class QueryKind(models.TextChoices):
    UPLOAD = "upload", "Uploaded photo"
    IMAGE_ID = "image_id", "Catalog image"
    STORAGE_URL = "storage_url", "Storage URL"
    TEXT = "text", "Text"


class SearchSource(models.TextChoices):
    API = "api", "API"
    CONSOLE = "console", "Admin console"


class SearchLog(models.Model):
    """One search, as it was asked and answered. An uploaded photo is kept as its content hash,
    never its bytes. Rows older than SIMSEARCH_SEARCH_LOG_DAYS are purged by a schedule."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    source = models.CharField(max_length=16, choices=SearchSource.choices, default=SearchSource.API)
    query_kind = models.CharField(max_length=16, choices=QueryKind.choices, db_index=True)
    query_ref = models.CharField(
        max_length=600, help_text="sha256 of an uploaded photo, the catalog image id, the storage key or the text."
    )
    image_type = models.CharField(max_length=16)
    filters = models.JSONField(default=dict, blank=True, help_text="top_k, product_code, defect_code, ...")
    engine = models.CharField(max_length=4)
    build_id = models.PositiveIntegerField(null=True, blank=True, help_text="The index build that answered.")
    result_ids = models.JSONField(default=list, blank=True, help_text="Image ids (V2) or paths (V1), best first.")
    scores = models.JSONField(default=list, blank=True)
    latency_ms = models.FloatField()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Search {self.pk} ({self.query_kind}, {self.created_at:%Y-%m-%d %H:%M})"
