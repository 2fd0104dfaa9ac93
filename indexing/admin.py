from __future__ import annotations

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.urls import path, reverse
from django.utils.functional import Promise
from django.utils.html import format_html
from django.utils.translation import gettext, gettext_noop
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_POST

from indexing.models import PENDING_STATUSES, BuildStatus, IndexBuild, ProductAnomalyModel
from indexing.selectors import serving_engine
from indexing.services import builds_fail_stale, index_build_activate, index_build_request
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


def request_rebuild(request: HttpRequest, index_type: str) -> list[IndexBuild]:
    """Queue a rebuild from the admin and tell the user what happened."""
    if not request.user.has_perm(REBUILD_INDEX):
        raise PermissionDenied
    try:
        builds = index_build_request(
            index_type=index_type, engine=serving_engine(settings.USE_INDEX_V2), requested_by=request.user
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
    readonly_fields = [f.name for f in IndexBuild._meta.fields]
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

    @admin.display(description=_("Error"))
    def error_short(self, obj: IndexBuild) -> str:
        return (obj.error[:120] + "…") if len(obj.error) > 120 else obj.error

    @admin.action(description=_("Activate selected ready build (promote or roll back)"), permissions=["activate"])
    def activate_builds(self, request: HttpRequest, queryset: QuerySet[IndexBuild]) -> None:
        for build in queryset.order_by("created_at"):
            try:
                index_build_activate(build=build)
            except ServiceError as exc:
                self.message_user(request, exc.message, messages.ERROR)
            else:
                self.message_user(
                    request,
                    gettext("Build %(id)s now answers %(image_type)s searches.")
                    % {"id": build.pk, "image_type": build.image_type},
                    messages.SUCCESS,
                )

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
    request_rebuild(request, index_type)
    return HttpResponseRedirect(reverse("admin:indexing_indexbuild_changelist"))
