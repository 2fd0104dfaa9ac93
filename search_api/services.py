"""Similarity search as one service for every face that asks it (the API and the admin console):
a typed query in, typed hits out, and a row in the search history. The faces only translate their
input into a `SearchInput` and the `SearchResult` (or `EngineComparison`) into their output."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import DatabaseError
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from catalog.models import Image, Product
from catalog.selectors import defect_type_get_by_code, image_list_visible_to, product_get_by_code
from catalog.services import image_inspect
from catalog.storage import delete_prefix, read_stored
from catalog.storage_urls import RefusedStorageUrl, storage_key_from_url
from indexing.anomaly import PatchFeatureExtractor, result_pngs
from indexing.anomaly import score as anomaly_score
from indexing.artifacts import LoadedIndex
from indexing.calibration import MODE_WHOLE, MatchAssessment
from indexing.embedder import WeightsUnavailable
from indexing.models import GalleryType, IndexEngine
from indexing.runtime import current_patch_extractor
from indexing.selectors import serving_engine
from search_api.focus import (
    FOCUS_WHOLE,
    PRODUCT_FROM_IMAGE,
    PRODUCT_FROM_REQUEST,
    FocusAnswer,
    FocusInfo,
    focused_search,
)
from search_api.index_cache import index_cache
from search_api.models import QueryKind, SearchLog, SearchSource
from search_api.search import (
    SearchOutcome,
    SearchQuery,
    allowed_ids,
    distinct_pictures,
    match_check,
    query_vector,
    serving_index,
    similarity_search,
    undecodable_query,
)
from simsearch_project.errors import (
    Conflict,
    NotFound,
    ServiceUnavailable,
    StorageUnavailable,
    safe_reason,
)

logger = logging.getLogger(__name__)

ANOMALY_UNTRAINED_WARNING = gettext_lazy(
    "The anomaly features come from untrained (random) weights: scores and maps are only indicative. "
    "Set SIMSEARCH_ANOMALY_WEIGHTS to a checkpoint (see the README)."
)
UNTRAINED_WARNING = gettext_lazy(
    "This index was built with untrained (random) weights: similarity scores are not meaningful."
)


@dataclass(frozen=True)
class SearchInput:
    """Exactly one of `upload`, `image_id`, `storage_url` and `text` (the faces validate that)."""

    top_k: int
    image_type: str
    upload: bytes | None = None
    upload_name: str = "upload"
    image_id: int | None = None
    storage_url: str | None = None
    text: str | None = None
    product_code: str | None = None
    defect_code: str | None = None
    exclude_image_id: int | None = None
    # The host the client called, so that a link to this server's own /media/ is understood.
    request_host: str | None = None
    source: str = SearchSource.API
    # Defect index (V2): "defect" or "whole"; None = by the defect region where the build and the
    # product allow it (search_api/focus.py).
    focus: str | None = None


@dataclass(frozen=True)
class V2Hit:
    image_id: int
    score: float
    local_path: str
    product_code: str
    product_name: str
    defect_code: str | None
    defect_name: str | None
    defect_name_en: str | None
    image_type: str
    sha256: str
    # Calibrated trust in the hit's defect type (product, normal index): indexing/calibration.py.
    # None where the answer is not calibrated (a build made before calibration, a text query).
    match_confidence: float | None = None
    confident_match: bool | None = None  # its score clears its type's threshold


@dataclass(frozen=True)
class V1Hit:
    image_path: str
    score: float
    product: str
    defect: str | None
    sha256: str | None  # None in V1 builds made before records carried the content hash
    match_confidence: float | None = None  # as V2Hit, from the legacy file-name labels
    confident_match: bool | None = None


@dataclass(frozen=True)
class SearchResult:
    engine: str
    query_label: str
    index: LoadedIndex
    hits: list[V2Hit] | list[V1Hit]
    elapsed_ms: float
    focus: FocusInfo | None = None  # V2 defect index: which search answered (None otherwise)
    # True when no hit clears its type's threshold: treat the photo as unknown. None: not calibrated.
    no_confident_match: bool | None = None


@dataclass(frozen=True)
class LabelDisagreement:
    """One picture (same bytes) that the legacy file name and the catalog label differently."""

    sha256: str
    image_path: str
    file_product: str
    file_defect: str | None
    image_id: int
    product_code: str
    defect_code: str | None


@dataclass(frozen=True)
class EngineComparison:
    """The same query answered by the V2 (catalog) and the V1 (legacy folder) index: the seed's
    migration sign-off ("compare the results, then switch")."""

    v2: SearchResult
    v1: SearchResult
    # Pictures (content hashes) in both answers.
    shared: frozenset[str]
    # Pictures in either answer whose file-name labels and catalog labels differ.
    disagreements: list[LabelDisagreement]
    # False when the V1 build predates content hashes in its records: nothing can be matched.
    comparable: bool

    @property
    def overlap(self) -> int:
        return len(self.shared)


@dataclass(frozen=True)
class _ResolvedQuery:
    image: bytes | None
    label: str
    kind: str
    reference: str
    catalog_image: Image | None = None  # the row of an image_id query (its product comes with it)

    @property
    def sha256(self) -> str | None:
        return hashlib.sha256(self.image).hexdigest() if self.image is not None else None


def search_run(*, query: SearchInput, user: Any) -> SearchResult:
    """Resolve the query (read the photo, check it and the codes), search the serving index and
    record the search. Raises ValidationError (400), NotFound, or the errors of `similarity_search`."""
    started = time.perf_counter()
    resolved = _resolve(query, user)
    result = _search(serving_engine(settings.USE_INDEX_V2), query, resolved, started=started)
    search_log_record(query=query, kind=resolved.kind, reference=resolved.reference, result=result, user=user)
    return result


def search_compare(*, query: SearchInput, user: Any) -> EngineComparison:
    """Answer the query from both engines' active indexes (each search is recorded), whatever
    USE_INDEX_V2 says, and compare the answers picture by picture (content hash)."""
    for engine in (IndexEngine.V2, IndexEngine.V1):
        serving_index(engine=engine, image_type=query.image_type)  # both exist, or a 503 that says which
    resolved = _resolve(query, user)
    # Like for like: the legacy engine searches whole photos, so the catalog engine does too.
    query = dataclasses.replace(query, focus=FOCUS_WHOLE)
    # One model embeds for both engines (each index is checked against its fingerprint): the query
    # is embedded once, and each answer's time includes that embedding.
    started = time.perf_counter()
    vector = query_vector(image=resolved.image, text=query.text)
    embed_seconds = time.perf_counter() - started
    results: dict[str, SearchResult] = {}
    for engine in (IndexEngine.V2, IndexEngine.V1):
        # A legacy index has no image ids: the query image itself is left out by its content hash.
        exclude_sha256 = resolved.sha256 if engine == IndexEngine.V1 and query.exclude_image_id else None
        results[engine] = _search(
            engine,
            query,
            resolved,
            started=time.perf_counter() - embed_seconds,
            exclude_sha256=exclude_sha256,
            vector=vector,
        )
        search_log_record(
            query=query, kind=resolved.kind, reference=resolved.reference, result=results[engine], user=user
        )
    v2, v1 = results[IndexEngine.V2], results[IndexEngine.V1]
    comparable = all(hit.sha256 for hit in v1.hits)
    v2_hashes = {hit.sha256 for hit in v2.hits}
    return EngineComparison(
        v2=v2,
        v1=v1,
        shared=frozenset(hit.sha256 for hit in v1.hits if hit.sha256 in v2_hashes),
        disagreements=label_disagreements(v2, v1) if comparable else [],
        comparable=comparable,
    )


def label_disagreements(v2: SearchResult, v1: SearchResult) -> list[LabelDisagreement]:
    """For every picture in either answer, its legacy files and catalog rows anywhere in the two
    indexes whose labels differ. Labels compare as `import_legacy_gallery` maps them: the file's
    product is the product code, its defect the defect code (none for a normal part)."""
    hashes = dict.fromkeys([hit.sha256 for hit in v2.hits] + [hit.sha256 for hit in v1.hits if hit.sha256])
    found = []
    for sha256 in hashes:
        for legacy_id in v1.index.ids_with_hash(sha256):
            legacy = v1.index.records[legacy_id]
            file_defect = None if legacy["image_type"] == "normal" else legacy["defect"]
            for catalog_id in v2.index.ids_with_hash(sha256):
                row = v2.index.records[catalog_id]
                if (legacy["product"], file_defect) != (row["product_code"], row["defect_code"]):
                    found.append(
                        LabelDisagreement(
                            sha256=sha256,
                            image_path=legacy["image_path"],
                            file_product=legacy["product"],
                            file_defect=file_defect,
                            image_id=row["image_id"],
                            product_code=row["product_code"],
                            defect_code=row["defect_code"],
                        )
                    )
    return found


def _search(
    engine: str,
    query: SearchInput,
    resolved: _ResolvedQuery,
    *,
    started: float,
    exclude_sha256: str | None = None,
    vector: np.ndarray | None = None,
) -> SearchResult:
    product_code, defect_code = query.product_code or None, query.defect_code or None
    _check_codes(engine, query.image_type, product_code, defect_code)
    search_query = SearchQuery(
        image=resolved.image,
        text=query.text,
        top_k=query.top_k,
        image_type=query.image_type,
        engine=engine,
        product_code=product_code,
        defect_code=defect_code,
        exclude_image_id=query.exclude_image_id if engine == IndexEngine.V2 else None,
        exclude_sha256=exclude_sha256,
    )
    outcome = similarity_search(search_query, vector=vector)
    records = outcome.index.records
    found, focus = outcome.hits, None
    if engine == IndexEngine.V2 and query.image_type == GalleryType.DEFECT:
        answer = _focused(query, resolved, search_query, outcome)
        focus = answer.info
        if answer.hits is not None:
            found = distinct_pictures(outcome.index, answer.hits, query.top_k)
    check = match_check(
        outcome.index, found, mode=focus.mode if focus else MODE_WHOLE, text_query=resolved.image is None
    )
    hits: list[V2Hit] | list[V1Hit]
    if engine == IndexEngine.V1:
        hits = [_v1_hit(records[i], score, a) for (i, score), a in zip(found, check.assessments, strict=True)]
    else:
        hits = [_v2_hit(records[i], score, a) for (i, score), a in zip(found, check.assessments, strict=True)]
    return SearchResult(
        engine=engine,
        query_label=resolved.label,
        index=outcome.index,
        hits=hits,
        elapsed_ms=(time.perf_counter() - started) * 1000,
        focus=focus,
        no_confident_match=check.no_confident_match,
    )


def _focused(
    query: SearchInput, resolved: _ResolvedQuery, search_query: SearchQuery, outcome: SearchOutcome
) -> FocusAnswer:
    """The defect-region search of a V2 defect-index query (search_api/focus.py). The product
    whose normal images describe the photo: the request's, the queried catalog image's, or the
    best whole-image match's."""
    product_code, product_from = search_query.product_code, PRODUCT_FROM_REQUEST
    if product_code is None and resolved.catalog_image is not None:
        product_code, product_from = resolved.catalog_image.product.product_code, PRODUCT_FROM_IMAGE
    return focused_search(
        loaded=outcome.index,
        image=resolved.image,
        requested=query.focus,
        product_code=product_code,
        product_from=product_from if product_code else None,
        whole_hits=outcome.hits,
        k=query.top_k + outcome.index.duplicate_vectors,
        allowed_ids=allowed_ids(outcome.index, search_query),
        extractor=_patch_extractor,
    )


def _invalid(field: str, message: str) -> ValidationError:
    return ValidationError({field: [message]})


def _inspected(data: bytes, field: str) -> bytes:
    try:
        image_inspect(data=data, query=True)
    except ValidationError as exc:
        raise _invalid(field, " ".join(exc.message_dict["file"])) from None
    return data


def _resolve(query: SearchInput, user: Any) -> _ResolvedQuery:
    if query.upload is not None:
        data = _inspected(query.upload, "image")
        return _ResolvedQuery(data, query.upload_name, QueryKind.UPLOAD, hashlib.sha256(data).hexdigest())
    if query.image_id is not None:
        # Another client's temporary image is not this user's to search with (nor to learn of).
        image = image_list_visible_to(user=user).filter(pk=query.image_id).select_related("product").first()
        if image is None:
            raise NotFound(_("No catalog image with id %(id)s.") % {"id": query.image_id})
        return _ResolvedQuery(
            read_stored(image.file.name), f"image_id:{image.pk}", QueryKind.IMAGE_ID, str(image.pk), image
        )
    if query.storage_url:
        try:
            key = storage_key_from_url(query.storage_url, request_host=query.request_host)
        except RefusedStorageUrl as exc:
            raise _invalid("storage_url", str(exc)) from None
        return _ResolvedQuery(_inspected(read_stored(key), "storage_url"), key, QueryKind.STORAGE_URL, key)
    text = query.text or ""
    return _ResolvedQuery(None, f"text:{text}", QueryKind.TEXT, text)


def _check_codes(engine: str, image_type: str, product_code: str | None, defect_code: str | None) -> None:
    if engine == IndexEngine.V2:
        if product_code and product_get_by_code(product_code=product_code) is None:
            raise _invalid("product_code", _("Unknown product code “%(code)s”.") % {"code": product_code})
        if defect_code and defect_type_get_by_code(defect_code=defect_code) is None:
            raise _invalid("defect_code", _("Unknown defect code “%(code)s”.") % {"code": defect_code})
        return
    # V1 has no catalog: a code is known if the legacy gallery has a file with it.
    loaded = index_cache.get(engine=engine, image_type=image_type)
    if loaded is not None:
        if product_code and not len(loaded.ids_matching(product_code=product_code, defect_code=None)):
            raise _invalid(
                "product_code", _("Unknown product “%(code)s” in the legacy gallery.") % {"code": product_code}
            )
        if defect_code and not len(loaded.ids_matching(product_code=None, defect_code=defect_code)):
            raise _invalid("defect_code", _("Unknown defect “%(code)s” in the legacy gallery.") % {"code": defect_code})


def _v2_hit(record: dict[str, Any], score: float, assessment: MatchAssessment | None = None) -> V2Hit:
    return V2Hit(
        image_id=record["image_id"],
        score=round(score, 6),
        local_path=record["local_path"],
        product_code=record["product_code"],
        product_name=record["product_name"],
        defect_code=record["defect_code"],
        defect_name=record["defect_name"],
        defect_name_en=record.get("defect_name_en"),
        image_type=record["image_type"],
        sha256=record["sha256"],
        match_confidence=assessment.confidence if assessment else None,
        confident_match=assessment.confident if assessment else None,
    )


def _v1_hit(record: dict[str, Any], score: float, assessment: MatchAssessment | None = None) -> V1Hit:
    return V1Hit(
        image_path=record["image_path"],
        score=round(score, 6),
        product=record["product"],
        defect=record["defect"],
        sha256=record.get("sha256"),
        match_confidence=assessment.confidence if assessment else None,
        confident_match=assessment.confident if assessment else None,
    )


# --- anomaly check ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AnomalyInput:
    """Exactly one of `upload`, `image_id`, `storage_url`; `product_code` unless `image_id`
    gives the product."""

    product_code: str | None = None
    upload: bytes | None = None
    upload_name: str = "upload"
    image_id: int | None = None
    storage_url: str | None = None
    request_host: str | None = None
    source: str = SearchSource.API
    # Defect index (V2): "defect" or "whole"; None = by the defect region where the build and the
    # product allow it (search_api/focus.py).
    focus: str | None = None


@dataclass(frozen=True)
class AnomalyOutcome:
    product_code: str
    score: float
    threshold: float  # the one the verdict used: the product's override, else the calibrated one
    calibrated_threshold: float
    is_anomalous: bool
    map_scale: float  # raw map pixel / 65535 * map_scale = patch distance
    heatmap_key: str
    overlay_key: str
    anomaly_map_key: str
    nearest_normal: V2Hit | None
    index: LoadedIndex
    features_untrained: bool
    expires_at: datetime
    query_label: str
    elapsed_ms: float


def anomaly_check(*, query: AnomalyInput, user: Any) -> AnomalyOutcome:
    """Score a photo against its product's anomaly model in the active normal build; write the
    heatmap, overlay and raw map to storage (nothing is written for a rejected request) and record
    the check. Raises ValidationError (400), NotFound, Conflict (no model, other features) or
    ServiceUnavailable (no normal build)."""
    started = time.perf_counter()
    resolved = _resolve(
        SearchInput(
            top_k=1,
            image_type=GalleryType.NORMAL,
            upload=query.upload,
            upload_name=query.upload_name,
            image_id=query.image_id,
            storage_url=query.storage_url,
            request_host=query.request_host,
        ),
        user,
    )
    product = _anomaly_product(query, resolved)
    loaded = serving_index(engine=IndexEngine.V2, image_type=GalleryType.NORMAL)
    entry = loaded.manifest.get("anomaly_models", {}).get(product.product_code)
    if entry is None:
        has = len(loaded.ids_matching(product_code=product.product_code, defect_code=None))
        raise Conflict(
            _(
                "Product “%(code)s” has no anomaly model: the active normal index (build %(build)s) holds "
                "%(has)s of its normal images and a model needs %(needs)s. Add normal images of it and "
                "rebuild the normal index."
            )
            % {
                "code": product.product_code,
                "build": loaded.build_id,
                "has": has,
                "needs": settings.SIMSEARCH_ANOMALY_MIN_NORMALS,
            },
            code="no_anomaly_model",
        )
    extractor = _patch_extractor()
    if extractor.fingerprint != entry["feature_fingerprint"]:
        raise Conflict(
            _(
                "The anomaly models of the active normal index (build %(build)s) were made with other "
                "features than this server computes (SIMSEARCH_ANOMALY_*). Rebuild the normal index."
            )
            % {"build": loaded.build_id},
            code="model_mismatch",
        )
    try:
        model = index_cache.anomaly_model(loaded, product.product_code)
    except Exception as exc:  # its file gone (pruned meanwhile), altered, or the storage down
        logger.exception("Could not load the anomaly model of %s from build %s", product.product_code, loaded.build_id)
        raise ServiceUnavailable(
            _(
                "The anomaly model of “%(code)s” in build %(build)s could not be loaded (%(reason)s). Retry, or "
                "rebuild the normal index."
            )
            % {"code": product.product_code, "build": loaded.build_id, "reason": safe_reason(exc)},
            code="model_unavailable",
        ) from exc
    image = resolved.image
    assert image is not None  # _resolve reads a photo for every input kind but text
    try:
        features = extractor.extract([image])[0]
    except Exception as exc:  # validated upstream; a decoder can still refuse odd files
        raise undecodable_query(exc) from exc
    threshold = product.anomaly_threshold if product.anomaly_threshold is not None else model.threshold
    checked = anomaly_score(model, features, threshold=threshold)  # map at the model's input size
    expires_at = timezone.now() + timedelta(seconds=settings.SIMSEARCH_RESULT_TTL_SECONDS)
    keys = _anomaly_results_write(expires_at, result_pngs(image, checked.anomaly_map, model.map_scale))
    nearest = loaded.records.get(checked.nearest_normal_id)
    outcome = AnomalyOutcome(
        product_code=product.product_code,
        score=round(float(checked.score), 6),
        threshold=float(threshold),
        calibrated_threshold=float(model.threshold),
        is_anomalous=bool(checked.is_anomalous),
        map_scale=float(model.map_scale),
        heatmap_key=keys["heatmap.png"],
        overlay_key=keys["overlay.png"],
        anomaly_map_key=keys["anomaly_map.png"],
        nearest_normal=_v2_hit(nearest, float(checked.nearest_normal_similarity)) if nearest else None,
        index=loaded,
        features_untrained=bool(entry.get("is_untrained")),
        expires_at=expires_at,
        query_label=resolved.label,
        elapsed_ms=(time.perf_counter() - started) * 1000,
    )
    _anomaly_log_record(query=query, resolved=resolved, outcome=outcome, user=user)
    return outcome


def _patch_extractor() -> PatchFeatureExtractor:
    try:
        return current_patch_extractor()
    except WeightsUnavailable as exc:
        logger.error("The anomaly feature model could not be loaded: %s", exc)
        raise ServiceUnavailable(
            _(
                "The anomaly feature model could not be loaded; check SIMSEARCH_ANOMALY_BACKBONE and "
                "SIMSEARCH_ANOMALY_WEIGHTS (the server log says why)."
            ),
            code="model_unavailable",
        ) from exc


def _anomaly_product(query: AnomalyInput, resolved: _ResolvedQuery) -> Product:
    if query.product_code:
        product = product_get_by_code(product_code=query.product_code)
        if product is None:
            raise _invalid("product_code", _("Unknown product code “%(code)s”.") % {"code": query.product_code})
        return product
    if resolved.catalog_image is not None and resolved.catalog_image.product is not None:
        return resolved.catalog_image.product
    raise _invalid("product_code", _("Give the product_code of the part in the photo."))


def _anomaly_results_write(expires_at: datetime, files: dict[str, bytes]) -> dict[str, str]:
    """Write the files under <SIMSEARCH_RESULT_PREFIX>/<expiry epoch>-<random>/: the folder name
    carries the expiry (the purge needs no database) and cannot be guessed (a local /media/ link
    is the permission to read it)."""
    folder = f"{settings.SIMSEARCH_RESULT_PREFIX.strip('/')}/{int(expires_at.timestamp())}-{uuid.uuid4().hex}"
    keys = {}
    try:
        for name, data in files.items():
            keys[name] = default_storage.save(f"{folder}/{name}", ContentFile(data))
    except Exception as exc:  # storage backends raise OSError, botocore errors, ...
        logger.exception("Writing anomaly results to storage failed")
        try:
            delete_prefix(folder)  # no half-written result left behind
        except Exception:
            logger.exception("Could not remove the partial anomaly result %s", folder)
        raise StorageUnavailable(
            _("The results could not be written to storage (%(reason)s).") % {"reason": safe_reason(exc)}
        ) from exc
    return keys


def anomaly_results_purge(*, now: datetime | None = None) -> int:
    """Delete the anomaly result folders whose expiry has passed; returns how many."""
    prefix = settings.SIMSEARCH_RESULT_PREFIX.strip("/")
    try:
        folders, _files = default_storage.listdir(prefix)
    except FileNotFoundError:  # nothing written yet (local storage)
        return 0
    cutoff = (now or timezone.now()).timestamp()
    purged = 0
    for folder in folders:
        expiry = folder.split("-", 1)[0]
        # An object store may keep listing an emptied "folder" (SeaweedFS does): count only
        # the folders that still had files.
        if expiry.isdigit() and int(expiry) < cutoff and delete_prefix(f"{prefix}/{folder}"):
            purged += 1
    if purged:
        logger.info("Purged %s expired anomaly results", purged)
    return purged


def _anomaly_log_record(*, query: AnomalyInput, resolved: _ResolvedQuery, outcome: AnomalyOutcome, user: Any) -> None:
    _history_write(
        user=user,
        source=query.source,
        query_kind=QueryKind.ANOMALY,
        query_ref=resolved.reference,
        image_type=GalleryType.NORMAL,
        filters={
            "product_code": outcome.product_code,
            "input": resolved.kind,
            "threshold": outcome.threshold,
            "is_anomalous": outcome.is_anomalous,
        },
        engine=IndexEngine.V2,
        build_id=outcome.index.build_id,
        result_ids=[outcome.nearest_normal.image_id] if outcome.nearest_normal else [],
        scores=[outcome.score],
        latency_ms=outcome.elapsed_ms,
    )


# --- search history -------------------------------------------------------------------------


def search_log_record(*, query: SearchInput, kind: str, reference: str, result: SearchResult, user: Any) -> None:
    """One history row per search (`_history_write`)."""
    filters = {
        "top_k": query.top_k,
        "product_code": query.product_code or None,
        "defect_code": query.defect_code or None,
        "exclude_image_id": query.exclude_image_id,
    }
    _history_write(
        user=user,
        source=query.source,
        query_kind=kind,
        query_ref=reference,
        image_type=query.image_type,
        filters={k: v for k, v in filters.items() if v is not None},
        engine=result.engine,
        build_id=result.index.build_id,
        result_ids=[hit.image_id if isinstance(hit, V2Hit) else hit.image_path for hit in result.hits],
        scores=[hit.score for hit in result.hits],
        latency_ms=result.elapsed_ms,
    )


def _history_write(*, user: Any, query_ref: str, latency_ms: float, **fields: Any) -> None:
    """One history row. Never fails the answer: while the database is down, searches and checks
    are answered from the local index and the row is lost (logged)."""
    try:
        SearchLog.objects.create(
            user_id=getattr(user, "pk", None), query_ref=query_ref[:600], latency_ms=round(latency_ms, 2), **fields
        )
    except DatabaseError:
        logger.warning("A %s was answered but could not be written to the history", fields["query_kind"], exc_info=True)


def search_log_purge(*, now: datetime | None = None) -> int:
    """Delete history rows older than SIMSEARCH_SEARCH_LOG_DAYS."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.SIMSEARCH_SEARCH_LOG_DAYS)
    deleted, _ = SearchLog.objects.filter(created_at__lt=cutoff).delete()
    if deleted:
        logger.info("Purged %s search history rows older than %s days", deleted, settings.SIMSEARCH_SEARCH_LOG_DAYS)
    return deleted
