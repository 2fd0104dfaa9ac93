from __future__ import annotations

import csv

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.translation import gettext_lazy as _

from search_api.models import SearchLog

CSV_COLUMNS = [
    "id",
    "created_at",
    "user",
    "source",
    "query_kind",
    "query_ref",
    "image_type",
    "filters",
    "engine",
    "build_id",
    "result_ids",
    "scores",
    "latency_ms",
]


@admin.register(SearchLog)
class SearchLogAdmin(admin.ModelAdmin):
    """The search history: read-only, filterable, exportable."""

    list_display = [
        "created_at",
        "user",
        "source",
        "query_kind",
        "query_short",
        "engine",
        "build_id",
        "hits",
        "latency",
    ]
    list_filter = ["source", "query_kind", "engine", "image_type", "created_at"]
    list_select_related = ["user"]
    search_fields = ["query_ref", "user__username"]
    date_hierarchy = "created_at"
    actions = ["export_csv"]
    readonly_fields = [field.name for field in SearchLog._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: SearchLog | None = None) -> bool:
        return request.method in ("GET", "HEAD") and super().has_view_permission(request, obj)

    @admin.display(description=_("Query"))
    def query_short(self, obj: SearchLog) -> str:
        return obj.query_ref if len(obj.query_ref) <= 40 else obj.query_ref[:39] + "…"

    @admin.display(description=_("Results"))
    def hits(self, obj: SearchLog) -> int:
        return len(obj.result_ids)

    @admin.display(description=_("Latency"), ordering="latency_ms")
    def latency(self, obj: SearchLog) -> str:
        return f"{obj.latency_ms:.0f} ms"

    @admin.action(description=_("Export selected searches as CSV"), permissions=["view"])
    def export_csv(self, request: HttpRequest, queryset: QuerySet[SearchLog]) -> HttpResponse:
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="search-history.csv"'
        writer = csv.writer(response)
        writer.writerow(CSV_COLUMNS)
        for row in queryset.select_related("user").order_by("created_at", "id"):
            values = {column: getattr(row, column) for column in CSV_COLUMNS}
            values["user"] = row.user.get_username() if row.user else ""
            writer.writerow([values[column] for column in CSV_COLUMNS])
        return response
