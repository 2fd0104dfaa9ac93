"""The staff search console in the admin (/admin/search/): a face of `search_run` and
`search_compare`, like the API. The view translates the form into a SearchInput and the answer
into result cards."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.storage import default_storage
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.translation import gettext as _

from catalog.selectors import images_by_id
from indexing.calibration import MODE_WHOLE
from indexing.models import IndexEngine
from indexing.selectors import active_builds
from search_api.forms import ConsoleMode, SearchConsoleForm
from search_api.services import (
    ANOMALY_UNTRAINED_WARNING,
    UNTRAINED_WARNING,
    AnomalyOutcome,
    EngineComparison,
    SearchResult,
    V2Hit,
    anomaly_check,
    search_compare,
    search_run,
)
from simsearch_project.errors import ServiceError


def search_console(request: HttpRequest) -> HttpResponse:
    if not request.user.has_perm("catalog.view_image"):
        raise PermissionDenied
    # "Find similar" links arrive as GET ?image_id=..; the form posts everything else.
    data = request.POST if request.method == "POST" else (request.GET if "image_id" in request.GET else None)
    active = active_builds()
    compare_available = any(
        (IndexEngine.V1, image_type) in active for engine, image_type in active if engine == IndexEngine.V2
    )
    form = SearchConsoleForm(data, request.FILES or None, admin_site=admin.site, compare_available=compare_available)
    result: SearchResult | None = None
    comparison: EngineComparison | None = None
    anomaly: AnomalyOutcome | None = None
    if data is not None and form.is_valid():
        host = request.get_host()
        try:
            if form.cleaned_data["mode"] == ConsoleMode.ANOMALY:
                anomaly = anomaly_check(query=form.anomaly_input(request_host=host), user=request.user)
            elif form.cleaned_data["compare"]:
                comparison = search_compare(query=form.search_input(request_host=host), user=request.user)
            else:
                result = search_run(query=form.search_input(request_host=host), user=request.user)
        except ValidationError as exc:
            form.add_error(None, " ".join(exc.messages))
        except ServiceError as exc:  # no index yet, model mismatch, storage down, ...
            form.add_error(None, exc.message)
    answers = [result] if result else [comparison.v2, comparison.v1] if comparison else []
    shared = comparison.shared if comparison else frozenset()
    context = {
        **admin.site.each_context(request),
        "title": _("Search console"),
        "form": form,
        "media": form.media,
        "comparison": comparison,
        "anomaly": _anomaly_panel(anomaly) if anomaly else None,
        "answers": [
            {"result": answer, "cards": _cards(answer, shared), "match_target_percent": _match_target_percent(answer)}
            for answer in answers
        ],
        "untrained_warning": UNTRAINED_WARNING
        if any(answer.index.manifest.get("is_untrained") for answer in answers)
        else "",
    }
    return TemplateResponse(request, "admin/search_console.html", context)


def _cards(result: SearchResult, shared: frozenset[str]) -> list[dict[str, Any]]:
    rows = images_by_id(ids=[hit.image_id for hit in result.hits if isinstance(hit, V2Hit)])
    cards = []
    for rank, hit in enumerate(result.hits, start=1):
        card: dict[str, Any] = {
            "rank": rank,
            "score": hit.score,
            "percent": max(0.0, min(100.0, hit.score * 100)),
            "shared": hit.sha256 in shared,
            "confidence": hit.match_confidence,
            "confident": hit.confident_match,
        }
        if isinstance(hit, V2Hit):
            image = rows.get(hit.image_id)
            card |= {
                "image_id": hit.image_id,
                "product": f"{hit.product_code} — {hit.product_name}",
                "defect": f"{hit.defect_code} — {hit.defect_name} / {hit.defect_name_en}" if hit.defect_code else "",
                "preview_url": (image.thumbnail or image.file).url if image else "",
                "file_url": image.file.url if image else "",
                "change_url": reverse("admin:catalog_image_change", args=[hit.image_id]),
                "similar_url": f"{reverse('search-console')}?image_id={hit.image_id}&exclude_self=on",
            }
        else:
            card |= {"image_id": "", "product": hit.product, "defect": hit.defect or "", "path": hit.image_path}
        cards.append(card)
    return cards


def _match_target_percent(result: SearchResult) -> float | None:
    """The share of right answers the thresholds of the calibration that judged `result` aim at."""
    calibration = result.index.calibration_for(result.focus.mode if result.focus else MODE_WHOLE)
    return calibration.target_precision * 100 if calibration and result.no_confident_match is not None else None


def _anomaly_panel(outcome: AnomalyOutcome) -> dict[str, Any]:
    nearest = outcome.nearest_normal
    rows = images_by_id(ids=[nearest.image_id]) if nearest else {}
    image = rows.get(nearest.image_id) if nearest else None
    return {
        "outcome": outcome,
        "percent": max(0.0, min(100.0, outcome.score / outcome.map_scale * 100)),
        "threshold_percent": max(0.0, min(100.0, outcome.threshold / outcome.map_scale * 100)),
        "overlay_url": default_storage.url(outcome.overlay_key),
        "heatmap_url": default_storage.url(outcome.heatmap_key),
        "anomaly_map_url": default_storage.url(outcome.anomaly_map_key),
        "nearest_url": (image.thumbnail or image.file).url if image else "",
        "nearest_change_url": reverse("admin:catalog_image_change", args=[nearest.image_id]) if nearest else "",
        "untrained_warning": ANOMALY_UNTRAINED_WARNING if outcome.features_untrained else "",
    }
