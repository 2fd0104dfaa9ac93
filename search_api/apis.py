from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse, QueryDict
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_safe
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from catalog.image_validation import read_limited
from catalog.selectors import defect_type_get_by_code, product_get_by_code
from catalog.services import temp_image_register
from catalog.storage_urls import RefusedStorageUrl, storage_key_from_url
from indexing.artifacts import LoadedIndex
from indexing.models import IndexBuild
from indexing.selectors import build_list, serving_engine
from indexing.services import builds_fail_stale, index_build_activate, index_build_request
from search_api.focus import FocusInfo
from search_api.index_cache import index_cache
from search_api.models import SearchSource
from search_api.serializers import (
    AnomalyDetectJsonRequestSerializer,
    AnomalyDetectRequestSerializer,
    AnomalyDetectResponseSerializer,
    IndexBuildActivateConflictSerializer,
    IndexBuildActivateSerializer,
    IndexBuildDetailSerializer,
    IndexBuildPublicSerializer,
    IndexBuildSerializer,
    IndexStatusResponseSerializer,
    RebuildRequestSerializer,
    RebuildResponseSerializer,
    SimilaritySearchJsonRequestSerializer,
    SimilaritySearchRequestSerializer,
    SimilaritySearchResponseSerializer,
    WorkerImageRegisterResponseSerializer,
    WorkerImageRegisterSerializer,
)
from search_api.services import (
    ANOMALY_UNTRAINED_WARNING,
    UNTRAINED_WARNING,
    AnomalyInput,
    SearchInput,
    V1Hit,
    V2Hit,
    anomaly_check,
    search_run,
)
from simsearch_project.drf_defaults import BoundedJSONParser, StrictFormParser, StrictMultiPartParser
from simsearch_project.errors import NotFound
from simsearch_project.permissions import (
    VIEW_INDEX_BUILD,
    CanActivateIndexBuild,
    CanRebuildIndex,
    CanRegisterQueryImage,
    CanViewIndexBuilds,
)


def _bad_request(field: str, message: str) -> serializers.ValidationError:
    return serializers.ValidationError({field: [message]})


def storage_key(url: str, request: Request, field: str = "storage_url") -> str:
    try:
        return storage_key_from_url(url, request_host=request.get_host())
    except RefusedStorageUrl as exc:
        raise _bad_request(field, str(exc)) from None


def _absolute_url(request: Request, url: str) -> str:
    return request.build_absolute_uri(url) if url.startswith("/") else url


def _index_info(loaded: LoadedIndex) -> dict[str, Any]:
    manifest = loaded.manifest
    return {
        "build_id": loaded.build_id,
        "image_type": manifest["image_type"],
        "engine": manifest["engine"],
        "model": manifest["model_name"],
        "pretrained": manifest["pretrained"],
        "is_untrained": bool(manifest.get("is_untrained")),
        "built_at": manifest["created_at"],
        "vector_count": loaded.size,
    }


def _uploaded(upload: Any) -> tuple[bytes | None, str]:
    """The bytes (within the upload limit) and name of an uploaded photo, if any. The file is
    closed here, so a spooled temporary file is removed at once, on errors too."""
    if not upload:
        return None, "upload"
    try:
        return read_limited(upload, max_bytes=settings.SIMSEARCH_MAX_UPLOAD_BYTES), upload.name or "upload"
    finally:
        upload.close()


class SimilaritySearchApi(generics.GenericAPIView):
    """Find the catalog images most similar to a photo (or a text), from the active index."""

    # A GenericAPIView with a serializer, so the browsable API offers an HTML form with a file
    # field: a photo can be searched from the browser.
    serializer_class = SimilaritySearchRequestSerializer
    parser_classes = [StrictMultiPartParser, StrictFormParser, BoundedJSONParser]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "search"

    @extend_schema(
        request={
            "multipart/form-data": SimilaritySearchRequestSerializer,
            # Only multipart carries a file; the other bodies carry image_id, storage_url or text.
            "application/x-www-form-urlencoded": SimilaritySearchJsonRequestSerializer,
            "application/json": SimilaritySearchJsonRequestSerializer,
        },
        responses={
            200: SimilaritySearchResponseSerializer,
            400: OpenApiResponse(description=_("Invalid query (the body names the problem)")),
            404: OpenApiResponse(description=_("image_id or storage object not found")),
            409: OpenApiResponse(description=_("The index was built with another model: rebuild")),
            503: OpenApiResponse(description=_("No index yet (run a rebuild), or storage/database unavailable")),
        },
    )
    def post(self, request: Request) -> Response:
        params = SimilaritySearchRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        upload, upload_name = _uploaded(data.get("image"))
        query = SearchInput(
            top_k=data["top_k"],
            image_type=data["image_type"],
            upload=upload,
            upload_name=upload_name,
            image_id=data.get("image_id"),
            storage_url=data.get("storage_url") or None,
            text=data.get("text") or None,
            product_code=data.get("product_code") or None,
            defect_code=data.get("defect_code") or None,
            exclude_image_id=data.get("exclude_image_id"),
            request_host=request.get_host(),
            source=SearchSource.API,
            focus=data.get("focus") or None,
        )
        result = search_run(query=query, user=request.user)
        body: dict[str, Any] = {
            "status": "success",
            "version": result.engine,
            "query_image": result.query_label,
            "index": _index_info(result.index),
            "results": [self._result(request, hit) for hit in result.hits],
            "no_confident_match": result.no_confident_match,
            "focus": _focus_info(result.focus),
        }
        if body["index"]["is_untrained"]:
            body["warning"] = str(UNTRAINED_WARNING)  # in the language of this request
        return Response(body)

    def _result(self, request: Request, hit: V2Hit | V1Hit) -> dict[str, Any]:
        if isinstance(hit, V1Hit):
            return {
                "image_path": hit.image_path,
                "similarity_score": hit.score,
                "product": hit.product,
                "defect": hit.defect,
                "match_confidence": hit.match_confidence,
                "confident_match": hit.confident_match,
            }
        return {
            "image_id": hit.image_id,
            "similarity_score": hit.score,
            "local_path": hit.local_path,
            # Presigned links expire and embed the signing host: made per response, never stored.
            "storage_url": _absolute_url(request, default_storage.url(hit.local_path)),
            "product_code": hit.product_code,
            "product_name": hit.product_name,
            "defect_code": hit.defect_code,
            "defect_name": hit.defect_name,
            "defect_name_en": hit.defect_name_en,
            "image_type": hit.image_type,
            "match_confidence": hit.match_confidence,
            "confident_match": hit.confident_match,
        }


def _focus_info(focus: FocusInfo | None) -> dict[str, Any] | None:
    if focus is None:
        return None
    region = (
        dict(zip(("left", "top", "right", "bottom"), (round(v, 4) for v in focus.region), strict=True))
        if focus.region
        else None
    )
    return {
        "mode": focus.mode,
        "reason": focus.reason,
        "product_code": focus.product_code,
        "product_from": focus.product_from,
        "region": region,
    }


class AnomalyDetectApi(generics.GenericAPIView):
    """Check a photo against the normal images of its product: anomaly score, verdict against the
    product's threshold, heatmap, overlay and raw map (links that expire), nearest normal image."""

    serializer_class = AnomalyDetectRequestSerializer
    parser_classes = [StrictMultiPartParser, StrictFormParser, BoundedJSONParser]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "search"

    @extend_schema(
        request={
            "multipart/form-data": AnomalyDetectRequestSerializer,
            "application/x-www-form-urlencoded": AnomalyDetectJsonRequestSerializer,
            "application/json": AnomalyDetectJsonRequestSerializer,
        },
        responses={
            200: AnomalyDetectResponseSerializer,
            400: OpenApiResponse(description=_("Invalid query (the body names the problem)")),
            404: OpenApiResponse(description=_("image_id or storage object not found")),
            409: OpenApiResponse(description=_("The product has no anomaly model yet, or other features: rebuild")),
            503: OpenApiResponse(description=_("No active normal index (run a rebuild), or storage unavailable")),
        },
    )
    def post(self, request: Request) -> Response:
        params = AnomalyDetectRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        upload, upload_name = _uploaded(data.get("image"))
        query = AnomalyInput(
            product_code=data.get("product_code") or None,
            upload=upload,
            upload_name=upload_name,
            image_id=data.get("image_id"),
            storage_url=data.get("storage_url") or None,
            request_host=request.get_host(),
            source=SearchSource.API,
        )
        outcome = anomaly_check(query=query, user=request.user)
        nearest = outcome.nearest_normal
        body: dict[str, Any] = {
            "status": "success",
            "product_code": outcome.product_code,
            "anomaly_score": outcome.score,
            "threshold": outcome.threshold,
            "calibrated_threshold": outcome.calibrated_threshold,
            "is_anomalous": outcome.is_anomalous,
            "heatmap_url": _absolute_url(request, default_storage.url(outcome.heatmap_key)),
            "overlay_url": _absolute_url(request, default_storage.url(outcome.overlay_key)),
            "anomaly_map_url": _absolute_url(request, default_storage.url(outcome.anomaly_map_key)),
            "anomaly_map_scale": outcome.map_scale,
            "nearest_normal": {
                "image_id": nearest.image_id,
                "similarity_score": nearest.score,
                "storage_url": _absolute_url(request, default_storage.url(nearest.local_path)),
            }
            if nearest
            else None,
            "index": _index_info(outcome.index),
            "anomaly_features": {
                "backbone": settings.SIMSEARCH_ANOMALY_BACKBONE,
                "is_untrained": outcome.features_untrained,
            },
            "expires_at": outcome.expires_at,
        }
        if outcome.features_untrained:
            body["warning"] = str(ANOMALY_UNTRAINED_WARNING)
        return Response(body)


class IndexRebuildApi(APIView):
    """Queue index rebuilds (`index_type` = defect, normal or all, in the body or query string)."""

    permission_classes = [CanRebuildIndex]

    @extend_schema(
        request=RebuildRequestSerializer,
        responses={202: RebuildResponseSerializer, 200: RebuildResponseSerializer},
    )
    def post(self, request: Request) -> Response:
        if not isinstance(request.data, Mapping):
            raise _bad_request("index_type", gettext('Send a JSON object or form fields, e.g. {"index_type": "all"}.'))
        raw = request.data.get("index_type") or request.query_params.get("index_type")
        # No default: an empty or mistyped body must not rebuild everything.
        # A form body stays a QueryDict, so that its "true" reads as a form's (StrictBooleanField).
        data = QueryDict(mutable=True) if isinstance(request.data, QueryDict) else {}
        if raw not in (None, ""):
            data["index_type"] = raw
        # "Not given" is an absent key; an empty form field counts as absent too, as in a browser form.
        if "adapt" in request.data and not (isinstance(data, QueryDict) and request.data.get("adapt") == ""):
            data["adapt"] = request.data["adapt"]
        params = RebuildRequestSerializer(data=data)
        params.is_valid(raise_exception=True)
        builds = index_build_request(
            index_type=params.validated_data["index_type"],
            engine=serving_engine(settings.USE_INDEX_V2),
            requested_by=request.user,
            adapt=params.validated_data.get("adapt"),
        )
        new = any(b.newly_queued for b in builds)
        # Read back: the task id is written when the queue accepts the task (on commit).
        builds = list(IndexBuild.objects.filter(pk__in=[b.pk for b in builds]).order_by("image_type"))
        return Response(
            {
                "task_id": next((b.task_id for b in builds if b.task_id), None),
                "status": "queued" if new else "already_in_progress",
                "builds": IndexBuildSerializer(builds, many=True).data,
            },
            status=status.HTTP_202_ACCEPTED if new else status.HTTP_200_OK,
        )


class IndexBuildListApi(generics.ListAPIView):
    permission_classes = [CanViewIndexBuilds]
    serializer_class = IndexBuildSerializer
    filterset_fields = ["status", "image_type", "engine", "is_active"]
    ordering_fields = ["created_at", "id"]
    queryset = build_list()

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        builds_fail_stale()
        return super().list(request, *args, **kwargs)


class IndexBuildDetailApi(generics.RetrieveAPIView):
    """One build, with the retrieval quality it measured on its own vectors (`quality`)."""

    permission_classes = [CanViewIndexBuilds]
    serializer_class = IndexBuildDetailSerializer
    queryset = build_list()


class IndexBuildActivateApi(APIView):
    """Promote or roll back to a ready build; every serving process switches within seconds. A build
    whose top-1 accuracy is below the active build's is refused (409, worse_than_active) unless the
    body says {"confirm": true}."""

    permission_classes = [CanActivateIndexBuild]

    @extend_schema(
        request=IndexBuildActivateSerializer,
        responses={
            200: IndexBuildSerializer,
            409: OpenApiResponse(
                response=IndexBuildActivateConflictSerializer,
                description=_(
                    "The build is not ready, or it is worse than the active build (both figures in the body): "
                    'send {"confirm": true} to activate it anyway.'
                ),
            ),
        },
    )
    def post(self, request: Request, pk: int) -> Response:
        if not isinstance(request.data, Mapping) or set(request.data) - {"confirm"}:
            raise _bad_request("confirm", gettext('Send a JSON object, e.g. {"confirm": true}, or no body.'))
        params = IndexBuildActivateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        build = IndexBuild.objects.filter(pk=pk).first()
        if build is None:
            raise NotFound(gettext("No index build %(id)s.") % {"id": pk})
        activated = index_build_activate(build=build, allow_worse=params.validated_data["confirm"])
        return Response(IndexBuildSerializer(activated).data)


class IndexStatusApi(APIView):
    """Which build answers each image type, in the database and in this process. Users with
    indexing.view_indexbuild see every field of the active builds; others a public summary."""

    @extend_schema(responses={200: IndexStatusResponseSerializer})
    def get(self, request: Request) -> Response:
        state = index_cache.state()
        engine = serving_engine(settings.USE_INDEX_V2)
        serializer = IndexBuildSerializer if request.user.has_perm(VIEW_INDEX_BUILD) else IndexBuildPublicSerializer
        active: dict[str, dict[str, Any]] = {}
        for build in build_list().filter(is_active=True):
            active.setdefault(build.engine, {})[build.image_type] = serializer(build).data
        return Response(
            {
                "engine": engine,
                "active": active,
                "loaded": {f"{e}/{t}": idx.build_id for (e, t), idx in state.loaded.items()},
                "degraded": state.degraded or None,
            }
        )


class WorkerImageRegisterApi(APIView):
    """Register an object a line worker uploaded to storage as a temporary query image."""

    permission_classes = [CanRegisterQueryImage]
    parser_classes = [BoundedJSONParser, StrictFormParser, StrictMultiPartParser]

    @extend_schema(request=WorkerImageRegisterSerializer, responses={201: WorkerImageRegisterResponseSerializer})
    def post(self, request: Request) -> Response:
        params = WorkerImageRegisterSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        product = product_get_by_code(product_code=data["product_code"])
        if product is None:
            raise _bad_request(
                "product_code", gettext("Unknown product code “%(code)s”.") % {"code": data["product_code"]}
            )
        defect_type = None
        if data["defect_code"]:
            defect_type = defect_type_get_by_code(defect_code=data["defect_code"])
            if defect_type is None:
                raise _bad_request(
                    "defect_code", gettext("Unknown defect code “%(code)s”.") % {"code": data["defect_code"]}
                )
        try:
            image = temp_image_register(
                storage_key=storage_key(data["storage_url"], request),
                product=product,
                defect_type=defect_type,
                ttl_seconds=settings.SIMSEARCH_TEMP_IMAGE_TTL_SECONDS,
                registered_by=request.user,
            )
        except ValidationError as exc:
            messages = exc.message_dict.get("file") or exc.messages
            raise _bad_request("storage_url", " ".join(messages)) from None
        return Response(
            {
                "image_id": image.pk,
                "image_type": image.image_type,
                "local_path": image.file.name,
                "expires_at": image.expires_at,
            },
            status=status.HTTP_201_CREATED,
        )


@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@require_safe
def readyz(request: HttpRequest) -> JsonResponse:
    """Ready = database reachable and the serving engine's active builds loaded."""
    database = "ok"
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        database = f"unreachable ({type(exc).__name__})"
        connection.close()
    state = index_cache.state()
    engine = serving_engine(settings.USE_INDEX_V2)
    loaded = {f"{e}/{t}": idx.build_id for (e, t), idx in state.loaded.items()}
    serving = [key for key in loaded if key.startswith(f"{engine}/")]
    if database == "ok" and serving:
        status_text, code = "ready", 200
    elif serving:
        status_text, code = "degraded", 200  # answering from the local cache
    else:
        status_text, code = "not_ready", 503
    return JsonResponse(
        {
            "status": status_text,
            "database": database,
            "engine": engine,
            "loaded": loaded,
            "degraded": state.degraded or None,
            "load_errors": {f"{e}/{t}": msg for (e, t), msg in state.load_errors.items()} or None,
            "hint": None
            if serving
            else gettext("No active index loaded: run a rebuild (admin or POST /api/index/rebuild/)."),
        },
        status=code,
    )
