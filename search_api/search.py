"""Similarity search: embed the query with the serving model, search the active index."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.db import connection
from django.utils.translation import gettext as _

from indexing.artifacts import LoadedIndex
from indexing.batcher import BatcherTimeout, QueryBatcher, batcher_for
from indexing.calibration import MODE_WHOLE, MatchAssessment
from indexing.embedder import Embedder, WeightsUnavailable
from indexing.runtime import current_embedder
from indexing.vector_index import search
from search_api.index_cache import index_cache
from simsearch_project.errors import Conflict, ServiceError, ServiceUnavailable, safe_reason

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchQuery:
    image: bytes | None
    text: str | None
    top_k: int
    image_type: str
    engine: str
    product_code: str | None = None
    defect_code: str | None = None
    exclude_image_id: int | None = None
    # Leave out every vector of this picture (the query's own content hash): how a legacy (V1)
    # index, which has no image ids, leaves the query image itself out.
    exclude_sha256: str | None = None


@dataclass(frozen=True)
class SearchOutcome:
    index: LoadedIndex
    hits: list[tuple[int, float]]


def serving_index(*, engine: str, image_type: str) -> LoadedIndex:
    loaded = index_cache.get(engine=engine, image_type=image_type)
    if loaded is None:
        raise ServiceUnavailable(
            _(
                "There is no active %(engine)s %(image_type)s index yet. Run a rebuild: the admin's Index builds "
                "page, POST /api/index/rebuild/, or `manage.py rebuild_index`."
            )
            % {"engine": engine, "image_type": image_type},
            code="no_index",
        )
    return loaded


def search_embedder() -> Embedder:
    """The process's query embedder, or a 503 that names the settings to check."""
    try:
        return current_embedder()
    except WeightsUnavailable as exc:
        logger.error("The search model could not be loaded: %s", exc)
        raise ServiceUnavailable(
            _(
                "The search model could not be loaded; check SIMSEARCH_MODEL and SIMSEARCH_PRETRAINED "
                "(the server log says why)."
            ),
            code="model_unavailable",
        ) from exc


def warm_up() -> None:
    """Load what the first search needs (the query model, the active indexes) ahead of it: a
    serving process calls this in a thread once it has started (gunicorn's post_worker_init),
    so that the first searches after a restart do not each wait seconds for the model. A search
    that arrives meanwhile waits for the same load (both loaders hold a lock); a failure here is
    only logged, and the first search meets it again and answers with its usual error."""
    started = time.monotonic()
    try:
        index_cache.refresh_if_due()
        search_embedder()
    except ServiceUnavailable as exc:  # search_embedder has logged why
        logger.warning("Warming up the serving process failed (%s); the first search will try again", exc)
    except Exception:
        logger.exception("Warming up the serving process failed; the first search will try again")
    else:
        logger.info("Serving process warmed up in %.1f s", time.monotonic() - started)
    finally:
        connection.close()  # this thread's own; no request will close it


def undecodable_query(exc: Exception) -> ServiceError:
    """A query photo that passed validation but that a decoder still refuses: a 400."""
    return ServiceError(
        _("The query image could not be decoded (%(reason)s).") % {"reason": safe_reason(exc)}, code="bad_image"
    )


def query_batcher(embedder: Embedder) -> QueryBatcher:
    """This process's batcher of query photos (SIMSEARCH_QUERY_BATCH_SIZE, _WAIT_MS), made on first use."""
    return batcher_for(
        embedder, max_batch=settings.SIMSEARCH_QUERY_BATCH_SIZE, max_wait_ms=settings.SIMSEARCH_QUERY_BATCH_WAIT_MS
    )


def query_vector(*, image: bytes | None, text: str | None) -> np.ndarray:
    """The query's embedding: the photo's if there is one, else the text's. A photo is decoded in
    the request's own thread and embedded in one forward pass with the photos that other requests
    of this process send at the same time; text queries are rare and embed alone."""
    embedder = search_embedder()
    if image is None:
        return embedder.encode_texts([text or ""])
    try:
        tensor = embedder.image_tensor(image)
    except Exception as exc:  # validated upstream; a decoder can still refuse odd files
        raise undecodable_query(exc) from exc
    try:
        return query_batcher(embedder).embed(tensor)
    except BatcherTimeout as exc:
        logger.error("A query waited too long for the search model: %s", exc)
        raise ServiceUnavailable(
            _("The search model is too busy to answer now; try again in a moment."), code="model_busy"
        ) from exc


def similarity_search(query: SearchQuery, *, vector: np.ndarray | None = None) -> SearchOutcome:
    """Search the serving index of the query's engine and image type. `vector`: the query's
    embedding when the caller already has it (one query asked of two engines)."""
    loaded = serving_index(engine=query.engine, image_type=query.image_type)
    embedder = search_embedder()
    if embedder.fingerprint != loaded.fingerprint:
        raise Conflict(
            _(
                "The active %(image_type)s index (build %(build)s) was made with model %(index_model)s "
                "(%(index_weights)s), but this server embeds queries with %(model)s (%(weights)s). Rebuild the "
                "index so both match."
            )
            % {
                "image_type": query.image_type,
                "build": loaded.build_id,
                "index_model": loaded.manifest.get("model_name"),
                "index_weights": loaded.manifest.get("pretrained"),
                "model": embedder.model_name,
                "weights": embedder.pretrained,
            },
            code="model_mismatch",
        )
    if vector is None:
        vector = query_vector(image=query.image, text=query.text)
    allowed = allowed_ids(loaded, query)
    hits = search(
        loaded.index, loaded.query_vector(vector)[0], query.top_k + loaded.duplicate_vectors, allowed_ids=allowed
    )
    return SearchOutcome(index=loaded, hits=distinct_pictures(loaded, hits, query.top_k))


def allowed_ids(loaded: LoadedIndex, query: SearchQuery) -> np.ndarray | None:
    """The ids the query may find (its product and defect filters, less the excluded pictures);
    None: all of them."""
    allowed = loaded.ids_matching(product_code=query.product_code, defect_code=query.defect_code)
    excluded = [query.exclude_image_id] if query.exclude_image_id is not None else []
    if query.exclude_sha256:
        excluded += loaded.ids_with_hash(query.exclude_sha256)
    if excluded:
        base = allowed if allowed is not None else loaded.all_ids()
        allowed = base[~np.isin(base, excluded)]
    return allowed


def distinct_pictures(loaded: LoadedIndex, hits: list[tuple[int, float]], top_k: int) -> list[tuple[int, float]]:
    """The best hit of each picture (content hash), up to top_k: identical bytes catalogued for
    two products (or two legacy file names) are one picture and take one place. Hits without a
    hash (V1 builds made before records carried one) are all kept."""
    seen: set[str] = set()
    kept: list[tuple[int, float]] = []
    for image_id, score in hits:
        sha256 = loaded.records[image_id].get("sha256")
        if sha256:
            if sha256 in seen:
                continue
            seen.add(sha256)
        kept.append((image_id, score))
        if len(kept) == top_k:
            break
    return kept


@dataclass(frozen=True)
class MatchCheck:
    """How far to trust an answer (indexing/calibration.py): one assessment per hit, and whether
    none clears its type's threshold. All None when the answer cannot be calibrated."""

    assessments: list[MatchAssessment | None]
    no_confident_match: bool | None


def match_check(
    loaded: LoadedIndex, hits: list[tuple[int, float]], *, mode: str = MODE_WHOLE, text_query: bool = False
) -> MatchCheck:
    """Each hit judged as if it were the top match, against the calibration of the score space
    that answered (`mode`). A text query compares a text with pictures, a scale the build's
    picture-to-picture calibration says nothing about: it is not judged, nor is an answer from a
    build without calibration."""
    calibration = None if text_query else loaded.calibration_for(mode)
    if calibration is None:
        return MatchCheck(assessments=[None] * len(hits), no_confident_match=None)
    assessments: list[MatchAssessment | None] = [
        # The score as the answer shows it (6 decimals), so a client can check it against the threshold.
        calibration.assess(loaded.records[image_id].get(calibration.label_field), round(score, 6))
        for image_id, score in hits
    ]
    return MatchCheck(
        assessments=assessments, no_confident_match=not any(a is not None and a.confident for a in assessments)
    )
