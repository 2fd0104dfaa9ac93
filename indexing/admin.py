from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.functional import Promise
from django.utils.html import format_html
from django.utils.translation import gettext, gettext_noop
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_POST

from indexing import artifact_store
from indexing.models import PENDING_STATUSES, BuildStatus, IndexBuild, ProductAnomalyModel
from indexing.quality import DEFECT_LABEL, quality_deltas
from indexing.selectors import serving_engine
from indexing.services import (
    build_quality_comparison,
    builds_fail_stale,
    index_build_activate,
    index_build_request,
)
from simsearch_project.errors import ServiceError
from simsearch_project.permissions import ACTIVATE_INDEX_BUILD, REBUILD_INDEX

# Marked here, translated where it is shown (gettext), in the language of that request or banner.
UNTRAINED_WARNING = gettext_noop("untrained weights — similarity is not meaningful; demo/test only")


class ProductAnomalyModelInline(admin.TabularInline):
    """A normal build's anomaly models, with the figure that says how well each one works."""

    model = ProductAnomalyModel
    fk_name = "build"
    extra = 0
    can_delete = False
    fields = [
        "product",
        "normal_count",
        "threshold",
        "image_auroc",
        "defect_count",
        "bank_size",
        "size_bytes",
        "reused_from",
        "fit_seconds",
    ]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: IndexBuild | None = None) -> bool:
        return False


def request_rebuild(request: HttpRequest, index_type: str, *, adapt: bool | None = None) -> list[IndexBuild]:
    """Queue a rebuild from the admin and tell the user what happened."""
    if not request.user.has_perm(REBUILD_INDEX):
        raise PermissionDenied
    try:
        builds = index_build_request(
            index_type=index_type,
            engine=serving_engine(settings.USE_INDEX_V2),
            requested_by=request.user,
            adapt=adapt,
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
        return []
    summary = ", ".join(
        gettext("%(image_type)s (build %(id)s, %(status)s)")
        % {"image_type": b.image_type, "id": b.pk, "status": b.get_status_display().lower()}
        for b in builds
    )
    message = gettext("Rebuild queued: %(summary)s. Progress is shown on the index builds page.")
    messages.success(request, message % {"summary": summary})
    if settings.SIMSEARCH_PRETRAINED == "untrained":
        messages.warning(request, gettext("This server runs on %(warning)s.") % {"warning": gettext(UNTRAINED_WARNING)})
    return builds


def _rebuild_action(index_type: str, label: Promise):  # type: ignore[no-untyped-def]
    @admin.action(description=label, permissions=["rebuild"])
    def action(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> HttpResponse:
        request_rebuild(request, index_type)
        return HttpResponseRedirect(reverse("admin:indexing_indexbuild_changelist"))

    action.__name__ = f"rebuild_{index_type}_index"
    return action


# Offered on the image changelist; they rebuild whole galleries, so no selection is needed.
REBUILD_ACTIONS = [
    _rebuild_action("defect", _("Rebuild defect index")),
    _rebuild_action("normal", _("Rebuild normal index")),
    _rebuild_action("all", _("Rebuild all indexes")),
]


def progress_bar(build: IndexBuild) -> str:
    total = build.progress_total
    done = build.progress_done if build.status != BuildStatus.READY else total
    text = f"{done}/{total}" if total else (build.get_status_display() if build.status == BuildStatus.QUEUED else "—")
    return format_html(
        '<progress class="build-progress" data-build="{}" value="{}" max="{}" style="width:120px"></progress> '
        '<span class="build-progress-text" data-build="{}">{}</span>',
        build.pk,
        done,
        max(total, 1),
        build.pk,
        text,
    )


# --- the build page's quality panel --------------------------------------------------------

CONFUSION_MAX_CLASSES = 40
QUALITY_METRICS = [
    ("top1_accuracy", _("Top-1 accuracy"), _("a random neighbour")),
    ("top5_vote_accuracy", _("Top-5 majority vote accuracy"), _("a vote of 5 random neighbours")),
    ("map_at_10", _("mAP@10"), _("a random ranking")),
]


def index_kind_label(build: IndexBuild) -> str:
    """Exact or approximate, and the approximate index's recall@10 measured when it was built
    (read from the build's manifest)."""
    try:
        entry = artifact_store.storage_index_entry(build.artifact_prefix, build.manifest_sha256)
    except Exception:  # storage unreachable or files pruned: the page still opens
        entry = None
    if not entry:
        return "—"
    if entry.get("kind") == "ivf":
        return gettext(
            "approximate (IVF, %(read)s of %(lists)s lists read per search): recall@10 %(recall)s against "
            "exact search, measured on %(queries)s of its vectors"
        ) % {
            "read": entry.get("nprobe"),
            "lists": entry.get("nlist"),
            "recall": entry.get("recall_at_10"),
            "queries": entry.get("recall_queries"),
        }
    return gettext("exact (flat): every vector compared, recall@10 1.0")


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _points(value: float | None) -> str:
    return "" if value is None else f"{100 * value:+.1f} pp"


def _trend(value: float | None) -> str:
    if not value:
        return "same"
    return "better" if value > 0 else "worse"


def _label_name(label: str) -> str:
    return gettext("Defect type") if label == DEFECT_LABEL else gettext("Product")


def _confusion_rows(confusion: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The matrix as table rows, each cell with a colour step 0-10 by its share of its row."""
    labels = confusion.get("labels", [])
    matrix = confusion.get("matrix", [])
    shown = sorted(range(len(labels)), key=lambda i: -sum(matrix[i]))[:CONFUSION_MAX_CLASSES]
    shown.sort()
    rows = []
    for i in shown:
        total = sum(matrix[i])
        if not total:
            continue
        rows.append(
            {
                "label": labels[i],
                "total": total,
                "cells": [
                    {
                        "count": matrix[i][j],
                        "heat": round(10 * matrix[i][j] / total),
                        "diagonal": i == j,
                        "title": f"{labels[i]} → {labels[j]}: {matrix[i][j]}",
                    }
                    for j in shown
                ],
            }
        )
    return [labels[j] for j in shown], rows


def quality_panel(build: IndexBuild, active: IndexBuild | None) -> dict[str, Any] | None:
    """What the build page shows of `build.quality`, beside the active build's figures."""
    quality = build.quality
    if not quality:
        return None
    theirs = active.quality if active and active.pk != build.pk else None
    deltas = quality_deltas(quality, theirs)
    blocks = []
    for label in (quality.get("main_label"), *sorted(set(quality.get("labels", {})) - {quality.get("main_label")})):
        block = quality["labels"].get(label)
        if not block:
            continue
        their_block = (theirs or {}).get("labels", {}).get(label, {})
        label_deltas = deltas.get(label, {})
        metrics = [
            {
                "name": name,
                "value": _percent(block[key]["value"]),
                "chance": _percent(block[key]["chance"]),
                "chance_kind": chance_kind,
                "active": _percent(their_block.get(key, {}).get("value")) if their_block else "",
                "delta": _points(label_deltas.get(key)),
                "trend": _trend(label_deltas.get(key)),
            }
            for key, name, chance_kind in QUALITY_METRICS
        ]
        columns, rows = _confusion_rows(block.get("confusion", {}))
        blocks.append(
            {
                "key": label,
                "name": _label_name(label),
                "queries": block["queries"],
                "classes": block["classes"],
                "majority_label": block["majority_class"]["label"],
                "majority_rate": _percent(block["majority_class"]["rate"]),
                "metrics": metrics,
                "per_class": [
                    {
                        "label": row["label"],
                        "queries": row["queries"],
                        "recall": _percent(row["recall"]),
                        "chance": _percent(row["chance"]),
                        "delta": _points(label_deltas.get("per_class", {}).get(row["label"])),
                        "trend": _trend(label_deltas.get("per_class", {}).get(row["label"])),
                    }
                    for row in block.get("per_class", [])
                ],
                "confusion_columns": columns,
                "confusion_rows": rows,
                "confusion_truncated": len(columns) < block["classes"],
            }
        )
    return {
        "quality": quality,
        "active_build": active if theirs else None,
        "is_active": bool(active and active.pk == build.pk),
        "blocks": blocks,
        "adaptation": quality.get("adaptation") if (quality.get("adaptation") or {}).get("requested") else None,
        "variants": _variants(quality),
    }


def _variant(name: str, figures: dict[str, Any] | None) -> dict[str, Any] | None:
    """One row of the search-variant comparison: the main label's headline figures."""
    block = (figures or {}).get("labels", {}).get((figures or {}).get("main_label"))
    if not block:
        return None
    return {
        "name": name,
        **{key: _percent(block[key]["value"]) for key, _, _ in QUALITY_METRICS},
        "chance": _percent(block["top1_accuracy"]["chance"]),
    }


def _variants(quality: dict[str, Any]) -> list[dict[str, Any]]:
    """The build's figures beside its alternatives: without the catalog adaptation it kept, and
    defect-region search against whole-photo search on the images that have a region."""
    rows = []
    if quality.get("base"):
        rows += [
            _variant(gettext("Adapted to the catalog (served)"), quality),
            _variant(gettext("Plain embedding"), quality["base"]),
        ]
    focus = quality.get("focus") or {}
    if focus.get("region"):
        count = focus.get("images")
        rows += [
            _variant(gettext("Defect region (%(count)s images)") % {"count": count}, focus["region"]),
            _variant(gettext("Whole photo, same %(count)s images") % {"count": count}, focus.get("whole")),
        ]
    return [row for row in rows if row]


@admin.register(IndexBuild)
class IndexBuildAdmin(admin.ModelAdmin):
    change_list_template = "admin/indexing/indexbuild/change_list.html"
    list_display = [
        "id",
        "image_type",
        "status_label",
        "is_active",
        "progress",
        "counts",
        "duration",
        "model_label",
        "error_short",
        "created_at",
    ]
    list_filter = ["status", "image_type", "engine", "is_active", "is_untrained"]
    list_select_related = ["requested_by"]
    actions = ["activate_builds"]
    # The figures are shown by the quality panel (change_form.html), not as raw JSON.
    readonly_fields = [*(f.name for f in IndexBuild._meta.fields if f.name != "quality"), "index_kind"]
    exclude = ["quality"]
    inlines = [ProductAnomalyModelInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: IndexBuild | None = None) -> bool:
        return request.method in ("GET", "HEAD") and super().has_view_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: IndexBuild | None = None) -> bool:
        return False  # old ready builds are the rollback history

    def has_rebuild_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(REBUILD_INDEX)

    def has_activate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(ACTIVATE_INDEX_BUILD)

    @admin.display(description=_("Status"), ordering="status")
    def status_label(self, obj: IndexBuild) -> str:
        # Colours come from build_progress.css by class, so the page's script can restyle a row
        # when the progress endpoint reports a new status.
        return format_html(
            '<strong class="build-status build-status-{}" data-build="{}" data-image-type="{}">{}</strong>',
            obj.status,
            obj.pk,
            obj.image_type,
            obj.get_status_display(),
        )

    @admin.display(description=_("Progress"))
    def progress(self, obj: IndexBuild) -> str:
        return progress_bar(obj)

    @admin.display(description=_("Vectors · embedded · reused · missing files"))
    def counts(self, obj: IndexBuild) -> str:
        if obj.status != BuildStatus.READY:
            return "—"
        return f"{obj.vector_count} · {obj.embedded_count} · {obj.reused_count} · {obj.missing_count}"

    @admin.display(description=_("Duration"))
    def duration(self, obj: IndexBuild) -> str:
        seconds = obj.duration_seconds
        return "—" if seconds is None else f"{seconds:.1f} s"

    @admin.display(description=_("Model"), ordering="model_name")
    def model_label(self, obj: IndexBuild) -> str:
        if obj.is_untrained or obj.pretrained == "untrained":
            return format_html(
                '{} <span style="color:#b02a2a;font-weight:bold" title="{}">⚠ {}</span>',
                obj.model_name,
                gettext(UNTRAINED_WARNING),
                gettext("untrained weights"),
            )
        return f"{obj.model_name} ({obj.pretrained})"

    @admin.display(description=_("Index kind"))
    def index_kind(self, obj: IndexBuild) -> str:
        return index_kind_label(obj)

    @admin.display(description=_("Error"))
    def error_short(self, obj: IndexBuild) -> str:
        return (obj.error[:120] + "…") if len(obj.error) > 120 else obj.error

    @admin.action(description=_("Activate selected ready build (promote or roll back)"), permissions=["activate"])
    def activate_builds(self, request: HttpRequest, queryset: QuerySet[IndexBuild]) -> HttpResponse | None:
        builds = list(queryset.order_by("created_at"))
        confirmed = request.POST.get("confirm_worse") == "yes"
        if not confirmed:
            worse = [
                comparison
                for comparison in (build_quality_comparison(build=b) for b in builds if b.status == BuildStatus.READY)
                if comparison.is_worse
            ]
            if worse:
                return self._confirm_worse(request, builds, worse)
        for build in builds:
            try:
                index_build_activate(build=build, allow_worse=confirmed)
            except ServiceError as exc:
                self.message_user(request, exc.message, messages.ERROR)
            else:
                self.message_user(
                    request,
                    gettext("Build %(id)s now answers %(image_type)s searches.")
                    % {"id": build.pk, "image_type": build.image_type},
                    messages.SUCCESS,
                )

    def _confirm_worse(self, request: HttpRequest, builds: list[IndexBuild], worse: list) -> TemplateResponse:
        """The page that asks before a build with a lower top-1 accuracy replaces the active one."""
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("Activate a build that scores lower?"),
            "opts": self.model._meta,
            "builds": builds,
            "comparisons": [
                {
                    "build_id": c.build_id,
                    "active_build_id": c.active_build_id,
                    "label": c.label_name,
                    "build_top1": _percent(c.build_top1),
                    "active_top1": _percent(c.active_top1),
                    "delta": _points((c.build_top1 or 0) - (c.active_top1 or 0)),
                }
                for c in worse
            ],
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/indexing/indexbuild/activate_confirmation.html", context)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        build = self.get_object(request, object_id)
        context = dict(extra_context or {})
        if build is not None:
            active = IndexBuild.objects.filter(image_type=build.image_type, engine=build.engine, is_active=True).first()
            context["quality_panel"] = quality_panel(build, active)
            context["quality_measured"] = build.quality is not None
        return super().change_view(request, object_id, form_url, extra_context=context)

    def get_urls(self) -> list:
        return [
            path("rebuild/", self.admin_site.admin_view(self.rebuild_view), name="indexing_indexbuild_rebuild"),
            path("progress/", self.admin_site.admin_view(self.progress_view), name="indexing_indexbuild_progress"),
            *super().get_urls(),
        ]

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        builds_fail_stale()
        context = {
            **(extra_context or {}),
            "can_rebuild": self.has_rebuild_permission(request),
            "config_untrained": settings.SIMSEARCH_PRETRAINED == "untrained",
            "untrained_warning": gettext(UNTRAINED_WARNING),
            "configured_model": f"{settings.SIMSEARCH_MODEL} ({settings.SIMSEARCH_PRETRAINED})",
            "active_untrained": IndexBuild.objects.filter(is_active=True, is_untrained=True).exists(),
        }
        return super().changelist_view(request, extra_context=context)

    def rebuild_view(self, request: HttpRequest) -> HttpResponse:
        return _rebuild_view(request)

    def progress_view(self, request: HttpRequest) -> JsonResponse:
        """Live progress for the changelist's script: every build that is, or just was, pending."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        ids = [int(i) for i in request.GET.getlist("id") if i.isdigit()]
        builds = IndexBuild.objects.filter(pk__in=ids) | IndexBuild.objects.filter(status__in=PENDING_STATUSES)
        return JsonResponse(
            {
                "builds": [
                    {
                        "id": b.pk,
                        "image_type": b.image_type,
                        "status": b.status,
                        # The label as the status column shows it, so the script need not know them.
                        "status_label": b.get_status_display(),
                        "is_active": b.is_active,
                        "done": b.progress_done,
                        "total": b.progress_total,
                    }
                    for b in builds.distinct()
                ]
            }
        )


@require_POST
def _rebuild_view(request: HttpRequest) -> HttpResponse:
    index_type = request.POST.get("index_type", "all")
    request_rebuild(request, index_type, adapt=True if request.POST.get("adapt") == "on" else None)
    return HttpResponseRedirect(reverse("admin:indexing_indexbuild_changelist"))
