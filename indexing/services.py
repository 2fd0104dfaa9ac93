"""Functions that write index data: request, run, activate and clean up builds."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone, translation
from django.utils.translation import gettext, gettext_noop

from catalog.models import Product
from catalog.storage import existing_names, read_object
from indexing import artifact_store
from indexing.adaptation import PROJECTION_FILE, Projection, fit_adaptation
from indexing.anomaly import FIT_REVISION, AnomalyModel, PatchFeatureExtractor, auroc, fit_anomaly_model
from indexing.anomaly import score as anomaly_score
from indexing.artifacts import sha256_hex
from indexing.calibration import calibrate_build
from indexing.embedder import Embedder, ImageDecodeError
from indexing.focus import FOCUS_FILE, FOCUS_PATCHES, DefectRegion, FocusDescriptors, defect_region
from indexing.legacy import scan_legacy_folder
from indexing.models import (
    PENDING_STATUSES,
    BuildChunk,
    BuildStatus,
    CachedEmbedding,
    ChunkStatus,
    GalleryType,
    IndexBuild,
    IndexEngine,
    ProductAnomalyModel,
)
from indexing.quality import DEFECT_LABEL, evaluate_build, labels_for, main_top1, record_labels
from indexing.runtime import current_embedder, current_patch_extractor
from indexing.selectors import gallery_rows
from simsearch_project.errors import Conflict, NotFound, ServiceError, safe_reason

logger = logging.getLogger(__name__)

REBUILD_TASK = "indexing.tasks.index_builds_run"
CHUNK_ATTEMPTS = 3  # a chunk that failed this often fails its build
CHUNK_POLL_SECONDS = 0.5
CACHE_LOOKUP_CHUNK = 500
REQUEST_ATTEMPTS = 5
ANOMALY_READ_CHUNK = 16  # photos the anomaly steps read and extract together (two chunks held at once)
ANOMALY_READ_THREADS = 8  # their object reads in flight at once (storage round trips, not CPU)

Item = TypeVar("Item")


@dataclass(frozen=True)
class GallerySource:
    """One image to index: its id in the index, content hash, how to read it, its record."""

    image_id: int
    sha256: str
    read: Callable[[], bytes]
    record: dict[str, Any]
    # V2: the object key, confirmed to exist before a cached embedding of it is trusted.
    storage_name: str | None = None


# --- request ------------------------------------------------------------------------------


def _gallery_types(index_type: str) -> list[str]:
    if index_type == "all":
        # Normal first: the defect build describes its images against the fresh anomaly models.
        return [GalleryType.NORMAL, GalleryType.DEFECT]
    if index_type in GalleryType.values:
        return [index_type]
    raise ServiceError(
        gettext("Unknown index type “%(index_type)s”; use defect, normal or all.") % {"index_type": index_type},
        code="invalid_index_type",
    )


def index_build_request(
    *,
    index_type: str,
    engine: str = IndexEngine.V2,
    requested_by: Any = None,
    enqueue: bool = True,
    adapt: bool | None = None,
) -> list[IndexBuild]:
    """Queue a build per image type, or return the build already queued/running for that type.
    `adapt`: learn a catalog adaptation (V2 builds; None = SIMSEARCH_ADAPT). A build already in
    flight keeps what it was asked.

    New builds are handed to the task queue when the transaction commits, as one task that
    runs them one after another (each build uses every core it is given). With
    `enqueue=False` the caller runs them itself (`rebuild_index --sync`). Each returned build
    carries `newly_queued`: False when it is the build that was already in flight."""
    if engine not in IndexEngine.values:
        raise ServiceError(
            gettext("Unknown engine “%(engine)s”; use v2 or v1.") % {"engine": engine}, code="invalid_engine"
        )
    if engine == IndexEngine.V1 and not settings.INDEX_DIR_V1:
        raise ServiceError(
            gettext("INDEX_DIR_V1 is not set: there is no legacy folder to index."), code="no_legacy_folder"
        )
    builds_fail_stale()
    if adapt is None:
        adapt = settings.SIMSEARCH_ADAPT == "on"
    builds: list[IndexBuild] = []
    with transaction.atomic():
        for image_type in _gallery_types(index_type):
            builds.append(
                _queued_or_pending(
                    image_type=image_type,
                    engine=engine,
                    requested_by=requested_by,
                    adapt=adapt and engine == IndexEngine.V2,
                )
            )
        new_ids = [b.pk for b in builds if b.newly_queued]  # type: ignore[attr-defined]
        if new_ids and enqueue:
            transaction.on_commit(lambda: _enqueue(new_ids))
    return builds


def _queued_or_pending(*, image_type: str, engine: str, requested_by: Any, adapt: bool = False) -> IndexBuild:
    """A new queued build, or the one already pending (one per type: a database constraint).

    The pending build can finish between our refused insert and the read that looks for it; the
    slot is then free again, so try again rather than fail."""
    for _ in range(REQUEST_ATTEMPTS):
        try:
            with transaction.atomic():
                build = IndexBuild.objects.create(
                    image_type=image_type,
                    engine=engine,
                    model_name=settings.SIMSEARCH_MODEL,
                    pretrained=settings.SIMSEARCH_PRETRAINED,
                    requested_by=requested_by if getattr(requested_by, "pk", None) else None,
                    adapt=adapt,
                )
            build.newly_queued = True  # type: ignore[attr-defined]
            return build
        except IntegrityError:
            pending = IndexBuild.objects.filter(
                image_type=image_type, engine=engine, status__in=PENDING_STATUSES
            ).first()
            if pending is not None:
                pending.newly_queued = False  # type: ignore[attr-defined]
                return pending
    raise Conflict(
        gettext("The %(image_type)s index build slot kept changing hands; request the rebuild again.")
        % {"image_type": image_type},
        code="rebuild_busy",
    )


def _enqueue(build_ids: list[int]) -> None:
    from django_q.tasks import async_task

    task_id = async_task(REBUILD_TASK, build_ids, task_name=f"index-build-{'-'.join(map(str, build_ids))}")
    IndexBuild.objects.filter(pk__in=build_ids).update(task_id=task_id or "")


# --- run ----------------------------------------------------------------------------------


class _Progress:
    """Writes progress and a heartbeat to the build row, at most about once a second."""

    def __init__(self, build: IndexBuild, total: int, listener: Callable[[int, int], None] | None = None):
        self.build_id = build.pk
        self.total = total
        self.listener = listener
        self.last_write = 0.0
        IndexBuild.objects.filter(pk=build.pk).update(progress_total=total, heartbeat_at=timezone.now())

    def __call__(self, done: int, *, force: bool = False) -> None:
        if self.listener:
            self.listener(min(done, self.total), self.total)
        now = time.monotonic()
        if force or now - self.last_write >= 1.0:
            self.last_write = now
            IndexBuild.objects.filter(pk=self.build_id).update(
                progress_done=min(done, self.total), heartbeat_at=timezone.now()
            )


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _ref_reader(kind: str, name: str) -> Callable[[], bytes]:
    """How a gallery image is read: an object of the storage ("storage") or a file of a legacy
    folder ("file"). The same for a build's own task and for a chunk another worker takes."""
    if kind == "storage":
        return lambda: read_object(name)
    return lambda: Path(name).read_bytes()


def _v2_sources(image_type: str) -> list[GallerySource]:
    return [
        GallerySource(
            image_id=row.image_id,
            sha256=row.sha256,
            read=_ref_reader("storage", row.file_name),
            record=row.record(),
            storage_name=row.file_name,
        )
        for row in gallery_rows(image_type=image_type)
    ]


def _drop_missing_objects(sources: list[GallerySource]) -> list[GallerySource]:
    """The sources whose object is still in storage. A cached embedding outlives its file: without
    this check a deleted file would stay in the index and searches would link to nothing."""
    names = [s.storage_name for s in sources if s.storage_name is not None]
    if not names:
        return sources
    present = existing_names(names)
    return [s for s in sources if s.storage_name is None or s.storage_name in present]


def _v1_sources(image_type: str) -> tuple[list[GallerySource], list[tuple[str, str]]]:
    files, rejected = scan_legacy_folder(Path(settings.INDEX_DIR_V1))
    sources = []
    for position, legacy in enumerate(files):
        if legacy.image_type != image_type:
            continue
        sha256 = hashlib.sha256(legacy.path.read_bytes()).hexdigest()
        sources.append(
            GallerySource(
                image_id=position,
                sha256=sha256,
                read=_ref_reader("file", str(legacy.path)),
                record={
                    "image_id": position,
                    # The content hash matches a legacy file with its imported catalog row (the
                    # console's engine comparison) and keeps identical files one picture in answers.
                    "sha256": sha256,
                    "image_path": str(legacy.path),
                    "product": legacy.product,
                    "defect": legacy.defect,
                    "image_type": legacy.image_type,
                },
            )
        )
    return sources, rejected


def _cached_vectors(fingerprint: str, hashes: list[str], dim: int) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    unique = sorted(set(hashes))
    for start in range(0, len(unique), CACHE_LOOKUP_CHUNK):
        chunk = unique[start : start + CACHE_LOOKUP_CHUNK]
        for sha, blob in CachedEmbedding.objects.filter(model_fingerprint=fingerprint, sha256__in=chunk).values_list(
            "sha256", "vector"
        ):
            vector = np.frombuffer(bytes(blob), dtype=np.float32)
            if vector.shape == (dim,):
                found[sha] = vector
    return found


def _embed_missing(
    *, embedder: Embedder, sources: list[GallerySource], progress: Callable[[int], None], already_done: int
) -> tuple[dict[str, np.ndarray], set[int]]:
    """Embed `sources` (one per distinct sha256), caching each chunk as soon as it is done so
    that a build that dies part-way still saves the next one that work."""
    vectors: dict[str, np.ndarray] = {}
    missing_ids: set[int] = set()
    batch_size = settings.SIMSEARCH_EMBED_BATCH_SIZE
    chunk_size = batch_size * 8
    for start in range(0, len(sources), chunk_size):
        chunk = sources[start : start + chunk_size]
        offset = already_done + start
        encoded = embedder.encode_images(
            [source.read for source in chunk],
            batch_size=batch_size,
            on_batch=lambda done, offset=offset: progress(offset + done),
        )
        missing_ids.update(chunk[i].image_id for i in encoded.missing)
        new = {chunk[i].sha256: encoded.vectors[row] for row, i in enumerate(encoded.present)}
        CachedEmbedding.objects.bulk_create(
            [
                CachedEmbedding(sha256=sha, model_fingerprint=embedder.fingerprint, vector=vector.tobytes())
                for sha, vector in new.items()
            ],
            ignore_conflicts=True,
        )
        vectors.update(new)
    return vectors, missing_ids


# --- builds spread over workers -------------------------------------------------------------


def _source_ref(source: GallerySource) -> list[Any]:
    """How any process reads this source: its storage name (V2) or its file's path (V1)."""
    if source.storage_name is not None:
        return [source.image_id, source.sha256, "storage", source.storage_name]
    return [source.image_id, source.sha256, "file", source.record["image_path"]]


def _embed_in_chunks(
    *,
    build: IndexBuild,
    embedder: Embedder,
    sources: list[GallerySource],
    progress: _Progress,
    already_done: int,
    timings: dict[str, Any],
) -> tuple[dict[str, np.ndarray], set[int]]:
    """Embed `sources` as chunks (BuildChunk rows) that any task-queue worker may claim: one task
    per chunk is queued, and this build's own task claims chunks too, so one worker alone still
    finishes. Each chunk writes its vectors to the embedding cache, which is how they come back
    here (and why a chunk taken again after its worker died redoes only what was not cached).
    A failed chunk is retried up to CHUNK_ATTEMPTS times; a chunk whose worker stopped
    reporting is taken again."""
    size = settings.SIMSEARCH_BUILD_CHUNK_SIZE
    BuildChunk.objects.filter(build=build).delete()
    chunks = BuildChunk.objects.bulk_create(
        [
            BuildChunk(build=build, number=n, sources=[_source_ref(s) for s in sources[start : start + size]])
            for n, start in enumerate(range(0, len(sources), size))
        ]
    )
    from django_q.tasks import async_task

    from indexing.tasks import build_chunks_run

    count = len(chunks)
    for n in range(count - 1):  # helpers; this task is the last worker
        async_task(build_chunks_run, build.pk, task_name=f"index-build-{build.pk}-chunk-{n}")
    while True:
        ran = _chunk_claim_and_run(build_id=build.pk, embedder=embedder)
        chunks = list(BuildChunk.objects.filter(build=build).only("number", "status", "done", "error"))
        progress(already_done + sum(c.done for c in chunks))  # every worker's images, and a heartbeat
        failed = [c for c in chunks if c.status == ChunkStatus.FAILED]
        if failed:
            raise ServiceError(
                gettext("Part %(number)s of the images could not be embedded: %(error)s")
                % {"number": failed[0].number + 1, "error": failed[0].error}
            )
        if all(c.status == ChunkStatus.DONE for c in chunks):
            break
        if not ran:  # the rest is with other workers: wait, and take back what a dead one held
            chunks_release_stale(build_id=build.pk)
            time.sleep(CHUNK_POLL_SECONDS)
    missing_ids = {i for c in BuildChunk.objects.filter(build=build).only("missing_ids") for i in c.missing_ids}
    wanted = [s.sha256 for s in sources if s.image_id not in missing_ids]
    vectors = _cached_vectors(embedder.fingerprint, wanted, embedder.dim)
    workers = sorted(set(BuildChunk.objects.filter(build=build).values_list("worker", flat=True)))
    logger.info("Build %s embedded %s images in %s chunks by %s", build.pk, len(sources), count, ", ".join(workers))
    timings["chunks"] = count
    timings["chunk_workers"] = workers
    BuildChunk.objects.filter(build=build).delete()
    return vectors, missing_ids


def build_chunks_run(*, build_id: int) -> int:
    """A task-queue worker's share of a build: claim pending chunks of it and embed them until
    none is left. Returns how many it did."""
    build = IndexBuild.objects.filter(pk=build_id, status=BuildStatus.RUNNING).first()
    if build is None:
        return 0
    embedder = current_embedder()
    if embedder.fingerprint != build.model_fingerprint:
        logger.warning(
            "Build %s needs model %s; this worker has %s", build_id, build.model_fingerprint, embedder.fingerprint
        )
        return 0
    done = 0
    while _chunk_claim_and_run(build_id=build_id, embedder=embedder):
        done += 1
    return done


def _chunk_claim_and_run(*, build_id: int, embedder: Embedder) -> bool:
    """Claim one pending chunk (a conditional update: exactly one worker wins it) and embed it.
    False when none is pending."""
    for chunk in BuildChunk.objects.filter(build_id=build_id, status=ChunkStatus.PENDING).only("pk")[:8]:
        claimed = BuildChunk.objects.filter(pk=chunk.pk, status=ChunkStatus.PENDING).update(
            status=ChunkStatus.RUNNING,
            worker=_worker_name(),
            heartbeat_at=timezone.now(),
            attempts=F("attempts") + 1,
            done=0,
        )
        if claimed:
            _chunk_run(BuildChunk.objects.get(pk=chunk.pk), embedder)
            return True
    return False


def _chunk_run(chunk: BuildChunk, embedder: Embedder) -> None:
    refs = chunk.sources
    try:
        cached = set(_cached_vectors(embedder.fingerprint, [sha for _, sha, _, _ in refs], embedder.dim))
        todo = [ref for ref in refs if ref[1] not in cached]  # a chunk taken again redoes only the rest

        def beat(done: int) -> None:
            BuildChunk.objects.filter(pk=chunk.pk, status=ChunkStatus.RUNNING).update(
                done=len(refs) - len(todo) + done, heartbeat_at=timezone.now()
            )

        sources = [
            GallerySource(image_id=image_id, sha256=sha, read=_ref_reader(kind, name), record={})
            for image_id, sha, kind, name in todo
        ]
        _, missing = _embed_missing(embedder=embedder, sources=sources, progress=beat, already_done=0)
    except Exception as exc:
        logger.exception("Chunk %s of build %s failed (attempt %s)", chunk.number, chunk.build_id, chunk.attempts)
        status = ChunkStatus.FAILED if chunk.attempts >= CHUNK_ATTEMPTS else ChunkStatus.PENDING
        BuildChunk.objects.filter(pk=chunk.pk, status=ChunkStatus.RUNNING).update(
            status=status, error=_describe(exc), heartbeat_at=timezone.now()
        )
        return
    BuildChunk.objects.filter(pk=chunk.pk, status=ChunkStatus.RUNNING).update(
        status=ChunkStatus.DONE, done=len(refs), missing_ids=sorted(missing), heartbeat_at=timezone.now()
    )


def chunks_release_stale(*, build_id: int) -> int:
    """Put back the running chunks whose worker died (same host: its process is gone; any host:
    no heartbeat for SIMSEARCH_BUILD_STALE_SECONDS), for another worker to take."""
    stale_before = timezone.now() - timedelta(seconds=settings.SIMSEARCH_BUILD_STALE_SECONDS)
    host = socket.gethostname()
    released = 0
    for chunk in BuildChunk.objects.filter(build_id=build_id, status=ChunkStatus.RUNNING):
        worker_host, _, pid = chunk.worker.rpartition(":")
        dead = worker_host == host and pid.isdigit() and not _process_alive(int(pid))
        if dead or (chunk.heartbeat_at and chunk.heartbeat_at < stale_before):
            released += BuildChunk.objects.filter(pk=chunk.pk, status=ChunkStatus.RUNNING, worker=chunk.worker).update(
                status=ChunkStatus.PENDING
            )
            logger.warning("Chunk %s of build %s: worker %s stopped; taken again", chunk.number, build_id, chunk.worker)
    return released


def _describe(exc: BaseException) -> str:
    return safe_reason(exc)


def index_build_run(
    *, build_id: int, on_progress: Callable[[int, int], None] | None = None, distributed: bool = False
) -> IndexBuild:
    """Build one queued index. On success it is written completely, then marked ready and
    activated in one transaction, builds beyond SIMSEARCH_KEEP_BUILDS are pruned, and then the
    image AUROC of its new anomaly models is measured (_anomaly_models_evaluate). On any failure
    before activation it is marked failed, its files are removed, and the active build keeps
    serving.
    `on_progress(done, total)` is for a progress bar. `distributed` (the task queue's builds):
    more than SIMSEARCH_BUILD_CHUNK_SIZE images to embed are split into chunks that every
    qcluster worker on the broker may take (`_embed_in_chunks`)."""
    claimed = IndexBuild.objects.filter(pk=build_id, status=BuildStatus.QUEUED).update(
        status=BuildStatus.RUNNING, started_at=timezone.now(), heartbeat_at=timezone.now(), worker=_worker_name()
    )
    build = IndexBuild.objects.get(pk=build_id)
    if not claimed:
        logger.warning("Build %s is %s, not queued; not running it again", build_id, build.status)
        return build
    try:
        to_evaluate = _run(build, on_progress, distributed)
    except Exception as exc:
        logger.exception("Index build %s failed", build_id)
        _fail(build, _describe(exc))
    else:
        try:
            builds_prune(image_type=build.image_type, engine=build.engine)
        except Exception:  # the new build serves; the next build prunes again
            logger.exception("Pruning old builds after build %s failed", build_id)
        try:
            _anomaly_models_evaluate(build, to_evaluate)
        except Exception:  # the new build serves; its AUROC stays empty and the next build measures it
            logger.exception("Measuring the anomaly models' AUROC after build %s failed", build_id)
    try:
        build.refresh_from_db()
    except IndexBuild.DoesNotExist:  # pruned meanwhile by a newer build of the same type
        logger.info("Build %s was pruned by a newer build before it finished measuring", build_id)
    return build


def _run(build: IndexBuild, on_progress: Callable[[int, int], None] | None, distributed: bool) -> list[_AurocToMeasure]:
    """Build, publish and activate; returns the anomaly models whose AUROC is still to measure."""
    timings: dict[str, Any] = {}
    started = time.perf_counter()
    embedder = current_embedder()
    timings["model_load_s"] = round(time.perf_counter() - started, 3)
    IndexBuild.objects.filter(pk=build.pk).update(
        model_name=embedder.model_name,
        pretrained=embedder.pretrained,
        is_untrained=embedder.is_untrained,
        model_fingerprint=embedder.fingerprint,
    )

    step = time.perf_counter()
    rejected: list[tuple[str, str]] = []
    if build.engine == IndexEngine.V1:
        sources, rejected = _v1_sources(build.image_type)
    else:
        sources = _v2_sources(build.image_type)
    timings["gallery_s"] = round(time.perf_counter() - step, 3)
    if not sources:
        raise ServiceError(
            gettext("There are no %(image_type)s images to index; add some to the catalog first.")
            % {"image_type": build.image_type}
        )
    gallery_count = len(sources)
    step = time.perf_counter()
    sources = _drop_missing_objects(sources)
    timings["exists_check_s"] = round(time.perf_counter() - step, 3)
    if not sources:
        raise ServiceError(
            gettext("None of the %(count)s %(image_type)s images is in storage any more.")
            % {"count": gallery_count, "image_type": build.image_type}
        )

    progress = _Progress(build, total=len(sources), listener=on_progress)
    step = time.perf_counter()
    reused = _cached_vectors(embedder.fingerprint, [s.sha256 for s in sources], embedder.dim)
    first_of_hash: dict[str, GallerySource] = {}
    for source in sources:
        if source.sha256 not in reused:
            first_of_hash.setdefault(source.sha256, source)
    reused_count = len(sources) - sum(1 for s in sources if s.sha256 not in reused)
    progress(reused_count, force=True)
    to_embed = list(first_of_hash.values())
    chunk_size = settings.SIMSEARCH_BUILD_CHUNK_SIZE
    if distributed and chunk_size and len(to_embed) > chunk_size:
        embedded, missing_ids = _embed_in_chunks(
            build=build,
            embedder=embedder,
            sources=to_embed,
            progress=progress,
            already_done=reused_count,
            timings=timings,
        )
    else:
        embedded, missing_ids = _embed_missing(
            embedder=embedder, sources=to_embed, progress=progress, already_done=reused_count
        )
    timings["embed_s"] = round(time.perf_counter() - step, 3)
    vectors_by_hash = {**reused, **embedded}
    missing_hashes = {s.sha256 for s in first_of_hash.values() if s.image_id in missing_ids}
    kept = [s for s in sources if s.sha256 in vectors_by_hash and s.sha256 not in missing_hashes]
    missing_count = gallery_count - len(kept)
    if not kept:
        raise ServiceError(
            gettext("None of the %(count)s %(image_type)s images could be read from storage.")
            % {"count": len(sources), "image_type": build.image_type}
        )

    step = time.perf_counter()
    ids = np.array([s.image_id for s in kept], dtype=np.int64)
    vectors = np.stack([vectors_by_hash[s.sha256] for s in kept]).astype(np.float32)
    prefix = (
        f"{settings.SIMSEARCH_INDEX_PREFIX}/{build.engine}/{build.image_type}/{build.pk:06d}-{uuid.uuid4().hex[:8]}"
    )
    IndexBuild.objects.filter(pk=build.pk).update(artifact_prefix=prefix)
    build.artifact_prefix = prefix
    embedded_count = len(embedded)
    counts = {
        "vector_count": len(kept),
        "embedded_count": embedded_count,
        "reused_count": reused_count,
        "missing_count": missing_count,
    }
    anomaly = AnomalyModels()
    if build.engine == IndexEngine.V2 and build.image_type == GalleryType.NORMAL:
        step = time.perf_counter()
        anomaly = _anomaly_models_fit(kept)
        timings["anomaly_s"] = round(time.perf_counter() - step, 3)
    focus = FocusArtifacts(reason="whole-image search only: not a V2 defect build")
    if build.engine == IndexEngine.V2 and build.image_type == GalleryType.DEFECT:
        step = time.perf_counter()
        focus = _focus_descriptors(kept)
        timings["focus_s"] = round(time.perf_counter() - step, 3)
    records = [s.record for s in kept]
    served, adaptation = vectors, _Adaptation(entry={"requested": False})
    if build.adapt and build.engine == IndexEngine.V2:
        step = time.perf_counter()
        adaptation = _adaptation_fit(build, vectors, records)
        timings["adapt_s"] = round(time.perf_counter() - step, 3)
        if adaptation.projection is not None:
            served = adaptation.projection.apply(vectors)
    quality = _quality_measured(build=build, vectors=served, records=records, timings=timings)
    if quality is not None:
        quality = _quality_extended(
            quality, build=build, raw=vectors, served=served, adaptation=adaptation, focus=focus, records=records
        )
    calibration_started = time.perf_counter()  # per-type "no match" thresholds (indexing/calibration.py)
    calibration = calibrate_build(
        served,
        [s.record for s in kept],
        engine=build.engine,
        image_type=build.image_type,
        target_precision=settings.SIMSEARCH_MATCH_PRECISION,
        region_descriptors=focus.files.get(FOCUS_FILE),
    )
    timings["calibration_s"] = round(time.perf_counter() - calibration_started, 3)
    manifest = {
        "quality": quality,
        "build_id": build.pk,
        "engine": build.engine,
        "image_type": build.image_type,
        "model_name": embedder.model_name,
        "pretrained": embedder.pretrained,
        "is_untrained": embedder.is_untrained,
        "model_fingerprint": embedder.fingerprint,
        "fingerprint_source": embedder.fingerprint_source,
        "dim": embedder.dim,
        "created_at": timezone.now().isoformat(),
        "counts": {**counts, "rejected_names": len(rejected)},
        "rejected_names": [{"name": n, "reason": r} for n, r in rejected[:1000]],
        "timings": timings,
        "anomaly_models": {**anomaly.entries, **focus.anomaly_entries},
        "focus": focus.manifest or {"reason": focus.reason},
        "calibration": calibration,
        "adaptation": adaptation.entry,
    }
    step = time.perf_counter()
    manifest_sha256 = artifact_store.pack_to_storage(
        prefix,
        ids=ids,
        vectors=served,
        metadata=records,
        manifest=manifest,
        extra_files={**anomaly.files, **focus.files, **adaptation.files},
        exact_max=settings.SIMSEARCH_EXACT_INDEX_MAX,
        recall_target=settings.SIMSEARCH_INDEX_RECALL_TARGET,
    )
    timings["write_s"] = round(time.perf_counter() - step, 3)
    timings["total_s"] = round(time.perf_counter() - started, 3)
    progress(len(sources), force=True)

    with transaction.atomic():
        # Only a build still running becomes ready: one the stale sweep has failed meanwhile (no
        # heartbeat for too long) stays failed, and its files go (see index_build_run).
        if not IndexBuild.objects.filter(pk=build.pk, status=BuildStatus.RUNNING).update(
            status=BuildStatus.READY,
            finished_at=timezone.now(),
            manifest_sha256=manifest_sha256,
            timings=timings,
            quality=quality,
            error="",
            **counts,
        ):
            raise ServiceError(
                gettext("Build %(id)s was marked failed while it was writing its files.") % {"id": build.pk}
            )
        ProductAnomalyModel.objects.bulk_create([ProductAnomalyModel(build_id=build.pk, **row) for row in anomaly.rows])
        index_build_activate(build=IndexBuild.objects.get(pk=build.pk))
    logger.info(
        "Index build %s ready: %s vectors (%s embedded, %s reused, %s missing) in %.1f s",
        build.pk,
        len(kept),
        embedded_count,
        reused_count,
        missing_count,
        timings["total_s"],
    )
    return anomaly.to_evaluate


# --- anomaly models (a normal build's per-product artifacts) ------------------------------------


@dataclass(frozen=True)
class _AurocToMeasure:
    """A model whose image AUROC is measured once its build serves (_anomaly_models_evaluate)."""

    product_id: int
    model_file: bytes  # the .npz the build wrote (the same bytes, not a copy): one model in memory at a time
    defect_files: list[tuple[str, str]]  # (sha256, storage name)
    eval_set: str


@dataclass
class AnomalyModels:
    files: dict[str, bytes] = field(default_factory=dict)  # artifact name -> .npz
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)  # product code -> manifest entry
    rows: list[dict[str, Any]] = field(default_factory=list)  # ProductAnomalyModel fields
    to_evaluate: list[_AurocToMeasure] = field(default_factory=list)


def anomaly_file_name(product_code: str) -> str:
    return f"anomaly-{product_code}.npz"


def _set_hash(extractor_fingerprint: str, hashes: list[str]) -> str:
    return hashlib.sha256(" ".join([extractor_fingerprint, *sorted(set(hashes))]).encode()).hexdigest()


def _spread(items: list[Any], limit: int) -> list[Any]:
    """At most `limit` items, evenly spaced (a bounded, repeatable sample)."""
    if len(items) <= limit:
        return items
    return [items[round(i * (len(items) - 1) / (limit - 1))] for i in range(limit)] if limit > 1 else items[:1]


def _anomaly_models_fit(kept: list[GallerySource]) -> AnomalyModels:
    """Per product with at least SIMSEARCH_ANOMALY_MIN_NORMALS distinct normal pictures: a memory
    bank of their patch features and a leave-one-out threshold, reused from an earlier build when
    the product's normal pictures, the feature model and the fitting method (anomaly.FIT_REVISION)
    are the same. Its image AUROC on the product's defect images is carried over from that build
    when the defect pictures are the same too, else left to _anomaly_models_evaluate
    (`to_evaluate`), after the build goes live."""
    extractor = current_patch_extractor()
    by_product: dict[str, dict[str, GallerySource]] = {}
    for source in kept:
        by_product.setdefault(source.record["product_code"], {}).setdefault(source.sha256, source)
    defects: dict[str, dict[str, str]] = {}
    for row in gallery_rows(image_type=GalleryType.DEFECT):
        defects.setdefault(row.product_code, {}).setdefault(row.sha256, row.file_name)
    products = {p.product_code: p.pk for p in Product.objects.filter(product_code__in=list(by_product))}
    result = AnomalyModels()
    for code, pictures in sorted(by_product.items()):
        if len(pictures) < settings.SIMSEARCH_ANOMALY_MIN_NORMALS or code not in products:
            continue
        started = time.perf_counter()
        normals = _spread(sorted(pictures.values(), key=lambda s: s.image_id), settings.SIMSEARCH_ANOMALY_MAX_NORMALS)
        normal_set = _set_hash(f"{extractor.fingerprint}:fit{FIT_REVISION}", [s.sha256 for s in normals])
        defect_files = _spread(sorted(defects.get(code, {}).items()), settings.SIMSEARCH_ANOMALY_MAX_EVAL_DEFECTS)
        eval_set = _set_hash(normal_set, [sha for sha, _ in defect_files])
        previous = _reusable_anomaly_model(products[code], normal_set)
        reused_from, evaluated, auroc_value = None, not defect_files, None
        if previous is not None:
            data, row = previous
            model = AnomalyModel.from_bytes(data)
            reused_from = row.build_id
            if row.eval_set_sha256 == eval_set:
                evaluated, auroc_value = True, row.image_auroc
        else:
            # A chunk of photos at a time: only their features stay, not every file's bytes.
            per_photo = []
            for source, value in _read_features(extractor, normals, lambda source: source.read()):
                if value is None:  # the build fails, serving goes on
                    raise ImageDecodeError(len(per_photo), f"normal image {source.image_id} does not decode")
                if isinstance(value, Exception):  # gone since it was embedded: likewise
                    raise value
                per_photo.append(value)
            features = np.stack(per_photo)
            del per_photo
            model = fit_anomaly_model(
                features,
                feature_fingerprint=extractor.fingerprint,
                input_size=extractor.input_size,
                normal_ids=[s.image_id for s in normals],
            )
            del features
            data = model.to_bytes()
        if not evaluated:
            result.to_evaluate.append(_AurocToMeasure(products[code], data, defect_files, eval_set))
        name = anomaly_file_name(code)
        sha = sha256_hex(data)
        result.files[name] = data
        result.entries[code] = {
            "file": name,
            "sha256": sha,
            "normal_count": model.normal_count,
            "threshold": model.threshold,
            "map_scale": model.map_scale,
            "defect_count": len(defect_files),  # its image AUROC is on the build's record (measured after)
            "feature_fingerprint": extractor.fingerprint,
            "backbone": extractor.backbone,
            "is_untrained": extractor.is_untrained,
        }
        result.rows.append(
            {
                "product_id": products[code],
                "file_name": name,
                "sha256": sha,
                "size_bytes": len(data),
                "normal_count": model.normal_count,
                "bank_size": len(model.features),
                "threshold": model.threshold,
                "image_auroc": auroc_value,
                "defect_count": len(defect_files),
                "normal_set_sha256": normal_set,
                "eval_set_sha256": eval_set if evaluated else "",  # "": to be measured
                "reused_from_id": reused_from,
                "fit_seconds": round(time.perf_counter() - started, 3),
            }
        )
    return result


def _reusable_anomaly_model(product_id: int, normal_set: str) -> tuple[bytes, ProductAnomalyModel] | None:
    """The newest ready build's model of the same normal pictures, feature model and fitting
    method (`normal_set`), if its file is still there and intact."""
    row = (
        ProductAnomalyModel.objects.filter(
            product_id=product_id, normal_set_sha256=normal_set, build__status=BuildStatus.READY
        )
        .select_related("build")
        .order_by("-build_id")
        .first()
    )
    if row is None:
        return None
    try:
        return _anomaly_model_file(row, row.build), row
    except Exception:  # pruned meanwhile, storage hiccup, altered: fit it again
        logger.warning("Could not reuse the anomaly model of build %s; fitting it again", row.build_id, exc_info=True)
        return None


def _anomaly_model_file(row: ProductAnomalyModel, build: IndexBuild) -> bytes:
    """The model file of `row` under `build`'s prefix, checked against the sha256 the row holds."""
    data = read_object(f"{build.artifact_prefix}/{row.file_name}")
    if sha256_hex(data) != row.sha256:
        raise ValueError(f"{row.file_name} of build {build.pk} does not match its build record")
    return data


def _anomaly_models_evaluate(build: IndexBuild, to_evaluate: list[_AurocToMeasure]) -> None:
    """The image AUROC of the anomaly models a normal build fitted (or reused under other defect
    pictures), measured once the build serves: scoring the defect photos costs about as much as
    fitting the models, and serving does not wait for the figure (the task's next build, if any,
    does). One that fails stays empty (eval_set_sha256 ""), and the next build that reuses the
    model measures it; so does a worker killed meanwhile."""
    if not to_evaluate:
        return
    started = time.perf_counter()
    for item in to_evaluate:
        try:
            value = _anomaly_auroc(AnomalyModel.from_bytes(item.model_file), item.defect_files)
        except Exception:
            logger.exception(
                "Measuring the anomaly model AUROC of product %s (build %s) failed", item.product_id, build.pk
            )
            continue
        ProductAnomalyModel.objects.filter(build_id=build.pk, product_id=item.product_id).update(
            image_auroc=value, eval_set_sha256=item.eval_set
        )
    timings = IndexBuild.objects.get(pk=build.pk).timings
    IndexBuild.objects.filter(pk=build.pk).update(
        timings={**timings, "anomaly_eval_s": round(time.perf_counter() - started, 3)}
    )


def _anomaly_auroc(model: AnomalyModel, defect_files: list[tuple[str, str]]) -> float | None:
    """Image AUROC: the product's defect images (scored against the model) against its normal
    images' leave-one-out scores. None without defect images. Files gone or undecodable since
    upload are left out of the figure; any other read error (storage down, a timeout) is raised,
    so that the figure is measured again later instead of kept from part of the photos."""
    normal_scores = model.calibration_scores[np.isfinite(model.calibration_scores)]
    if not defect_files or not len(normal_scores):
        return None
    extractor = current_patch_extractor()
    defect_scores = []
    for name, value in _read_features(extractor, [name for _, name in defect_files], read_object):
        if isinstance(value, FileNotFoundError):
            logger.warning("Anomaly evaluation skipped %s: it is no longer in storage", name)
        elif isinstance(value, Exception):
            raise value
        elif value is None:
            logger.warning("Anomaly evaluation skipped %s: it does not decode", name)
        else:
            defect_scores.append(anomaly_score(model, value).score)
    if not defect_scores:
        return None
    labels = [False] * len(normal_scores) + [True] * len(defect_scores)
    return round(auroc(labels, [*normal_scores.tolist(), *defect_scores]), 4)


def _read_ahead(items: Sequence[Item], read: Callable[[Item], bytes]) -> Iterator[list[tuple[Item, bytes | Exception]]]:
    """(item, read(item)) for every item, ANOMALY_READ_CHUNK at a time and in order; each chunk is
    read in threads while the caller works on the one before, so object-storage round trips (one
    GET per photo on S3) overlap with each other and with feature extraction instead of adding
    up. An exception of `read` comes back in place of the bytes."""

    def attempt(item: Item) -> bytes | Exception:
        try:
            return read(item)
        except Exception as exc:
            return exc

    chunks = [items[start : start + ANOMALY_READ_CHUNK] for start in range(0, len(items), ANOMALY_READ_CHUNK)]
    pool = ThreadPoolExecutor(max_workers=ANOMALY_READ_THREADS, thread_name_prefix="anomaly-read")
    try:
        ahead = pool.map(attempt, chunks[0]) if chunks else iter(())  # map submits every read at once
        for number, chunk in enumerate(chunks):
            current = ahead
            if number + 1 < len(chunks):
                ahead = pool.map(attempt, chunks[number + 1])
            yield list(zip(chunk, current, strict=True))
    finally:  # a caller that stops early (an error) does not wait for the reads nobody will use
        pool.shutdown(wait=True, cancel_futures=True)


def _read_features(
    extractor: PatchFeatureExtractor, items: Sequence[Item], read: Callable[[Item], bytes]
) -> Iterator[tuple[Item, np.ndarray | Exception | None]]:
    """(item, patch features of read(item)) for every item, in order: read ahead (_read_ahead)
    and extracted a chunk at a time (_patch_features). In place of the features: the exception
    of a read that failed, or None for a photo that does not decode; the caller decides what
    either costs."""
    for chunk in _read_ahead(items, read):
        readable = [position for position, (_, photo) in enumerate(chunk) if not isinstance(photo, Exception)]
        values: list[Any] = [photo for _, photo in chunk]  # the read errors stay in place
        features = _patch_features(extractor, [values[position] for position in readable])
        for position, value in zip(readable, features, strict=True):
            values[position] = value
        yield from zip((item for item, _ in chunk), values, strict=True)


def _patch_features(extractor: PatchFeatureExtractor, photos: list[bytes]) -> list[np.ndarray | None]:
    """Patch features of each photo, in batches; None for one that does not decode (the caller,
    who knows its name, says so)."""
    features: list[np.ndarray | None] = [None] * len(photos)
    positions = list(range(len(photos)))
    while positions:
        try:
            extracted = extractor.extract([photos[i] for i in positions])
        except ImageDecodeError as exc:
            del positions[exc.index]
            continue
        for position, value in zip(positions, extracted, strict=True):
            features[position] = value
        break
    return features


# --- defect-region descriptors (a defect build's focus search, indexing/focus.py) ----------------


@dataclass
class FocusArtifacts:
    files: dict[str, bytes] = field(default_factory=dict)  # focus.npz + copies of the anomaly models used
    anomaly_entries: dict[str, dict[str, Any]] = field(default_factory=dict)  # product code -> manifest entry
    manifest: dict[str, Any] | None = None  # the build manifest's "focus" entry; None: no focus search
    reason: str = ""  # why there is none (for the log and the build's manifest)


def _focus_descriptors(kept: list[GallerySource]) -> FocusArtifacts:
    """For a V2 defect build: each defect image described by its most anomalous patches against
    its product's anomaly model of the active normal build. The models used are copied into this
    build, so queries are described against exactly the banks the catalog was described with,
    whatever later normal builds do. Images of products without a model are searched whole only."""
    normal = IndexBuild.objects.filter(
        engine=IndexEngine.V2, image_type=GalleryType.NORMAL, is_active=True, status=BuildStatus.READY
    ).first()
    if normal is None:
        return FocusArtifacts(reason="no active normal index: build it first, then the defect index")
    extractor = current_patch_extractor()
    by_product: dict[str, list[GallerySource]] = {}
    for source in kept:
        by_product.setdefault(source.record["product_code"], []).append(source)
    result = FocusArtifacts()
    ids: list[int] = []
    regions: list[DefectRegion] = []
    for row in ProductAnomalyModel.objects.filter(
        build=normal, product__product_code__in=list(by_product)
    ).select_related("product"):
        code = row.product.product_code
        try:
            data = _anomaly_model_file(row, normal)
            model = AnomalyModel.from_bytes(data)
            model.require_fingerprint(extractor.fingerprint)
        except Exception as exc:  # gone, altered, other feature settings: whole-image search only
            logger.warning("Focus search: no usable anomaly model for %s (%s)", code, safe_reason(exc))
            continue
        by_hash: dict[str, DefectRegion | None] = {}
        first_of_hash: dict[str, GallerySource] = {}  # a picture catalogued twice is described once
        for source in by_product[code]:
            first_of_hash.setdefault(source.sha256, source)
        for source, value in _read_features(extractor, list(first_of_hash.values()), lambda source: source.read()):
            by_hash[source.sha256] = None  # gone or undecodable since the embedding pass: whole-image only
            if isinstance(value, Exception):
                logger.warning("Focus search skipped image %s: %s", source.image_id, safe_reason(value))
            elif value is None:
                logger.warning("Focus search skipped image %s: it does not decode", source.image_id)
            else:
                try:
                    by_hash[source.sha256] = defect_region(model, value)
                except Exception:
                    logger.warning("Focus search skipped image %s", source.image_id, exc_info=True)
        described = [(s.image_id, by_hash.get(s.sha256)) for s in by_product[code]]
        described = [(image_id, region) for image_id, region in described if region is not None]
        if not described:
            continue
        ids += [image_id for image_id, _ in described]
        regions += [region for _, region in described]
        result.files[row.file_name] = data
        result.anomaly_entries[code] = {
            "file": row.file_name,
            "sha256": row.sha256,
            "normal_count": row.normal_count,
            "threshold": row.threshold,
            "map_scale": model.map_scale,
            "image_auroc": row.image_auroc,
            "defect_count": row.defect_count,
            "feature_fingerprint": extractor.fingerprint,
            "backbone": extractor.backbone,
            "is_untrained": extractor.is_untrained,
            "copied_from_build": normal.pk,
        }
    if not ids:
        result.reason = "no product of these defect images has an anomaly model in the active normal build"
        return result
    descriptors = FocusDescriptors.from_regions(
        ids, regions, patches=FOCUS_PATCHES, feature_fingerprint=extractor.fingerprint
    )
    result.files[FOCUS_FILE] = descriptors.to_bytes()
    result.manifest = {
        "file": FOCUS_FILE,
        "patches": FOCUS_PATCHES,
        "normal_build_id": normal.pk,
        "count": len(ids),
        "products": sorted(result.anomaly_entries),
        "feature_fingerprint": extractor.fingerprint,
    }
    return result


def _fail(build: IndexBuild, reason: str) -> None:
    build.refresh_from_db()
    IndexBuild.objects.filter(pk=build.pk, status__in=PENDING_STATUSES).update(
        status=BuildStatus.FAILED, finished_at=timezone.now(), error=reason[:4000], is_active=False
    )
    _remove_artifacts(build)


def _remove_artifacts(build: IndexBuild) -> None:
    try:
        artifact_store.storage_delete(build.artifact_prefix)
    except Exception:
        logger.exception("Could not remove the files of failed build %s under %s", build.pk, build.artifact_prefix)


# --- catalog adaptation (indexing/adaptation.py) --------------------------------------------


@dataclass
class _Adaptation:
    entry: dict[str, Any]  # the manifest's "adaptation"
    projection: Projection | None = None
    files: dict[str, bytes] = field(default_factory=dict)


def _adaptation_fit(build: IndexBuild, vectors: np.ndarray, records: list[dict[str, Any]]) -> _Adaptation:
    """Learn a projection from the catalog's labels (defect type for the defect index, product
    for the normal index) on the build's embeddings; kept only when it helps on held-out
    pictures. The cached embeddings are never changed: the projection is a file of this build,
    applied to its gallery here and to every query against it (LoadedIndex.query_vector)."""
    products, defects, hashes = record_labels(records)
    labels = defects if build.image_type == GalleryType.DEFECT else products
    result = fit_adaptation(vectors, [str(label) for label in labels], hashes)
    entry = {"requested": True, "label": labels_for(build.image_type)[0], **result.summary()}
    logger.info("Build %s catalog adaptation: %s", build.pk, result.reason)
    if result.projection is None:
        return _Adaptation(entry=entry)
    return _Adaptation(entry=entry, projection=result.projection, files={PROJECTION_FILE: result.projection.to_bytes()})


def _quality_extended(
    quality: dict[str, Any],
    *,
    build: IndexBuild,
    raw: np.ndarray,
    served: np.ndarray,
    adaptation: _Adaptation,
    focus: FocusArtifacts,
    records: list[dict[str, Any]],
) -> dict[str, Any]:
    """The build's figures (measured on the vectors it serves) with, beside them, the plain
    embeddings' figures when an adaptation was kept, and the defect-region search's figures
    against whole-photo search on the same images when the build has region descriptors."""
    extended = dict(quality)
    extended["adaptation"] = adaptation.entry
    if adaptation.projection is not None:
        base = _quality_measured(build=build, vectors=raw, records=records, timings={})
        extended["base"] = {"labels": base["labels"], "main_label": base["main_label"]} if base else None
    if FOCUS_FILE in focus.files:
        descriptors = FocusDescriptors.from_bytes(focus.files[FOCUS_FILE])
        rows = {int(record["image_id"]): i for i, record in enumerate(records)}
        subset = [rows[int(image_id)] for image_id in descriptors.ids]
        subset_records = [records[i] for i in subset]
        region = _quality_measured(
            build=build, vectors=descriptors.centred(descriptors.descriptors), records=subset_records, timings={}
        )
        whole = _quality_measured(build=build, vectors=served[subset], records=subset_records, timings={})
        extended["focus"] = {
            "images": len(subset),
            "region": {"labels": region["labels"], "main_label": region["main_label"]} if region else None,
            "whole": {"labels": whole["labels"], "main_label": whole["main_label"]} if whole else None,
        }
    return extended


# --- retrieval quality (indexing/quality.py) ----------------------------------------------


def _quality_measured(
    *, build: IndexBuild, vectors: np.ndarray, records: list[dict[str, Any]], timings: dict[str, float]
) -> dict[str, Any] | None:
    """The build's leave-one-out figures (V2 labels from the catalog, V1 from file names). They
    describe the build and are not needed to serve it: a failure is logged and leaves them empty."""
    step = time.perf_counter()
    try:
        measured = evaluate_build(image_type=build.image_type, vectors=vectors, records=records)
    except Exception:
        logger.exception("Measuring the retrieval quality of build %s failed", build.pk)
        return None
    timings["quality_s"] = round(time.perf_counter() - step, 3)
    return measured


@dataclass(frozen=True)
class QualityComparison:
    """A build's headline figure (top-1 accuracy on its main label: defect type for the defect
    index, product for the normal index) beside that of the active build of its type and engine."""

    build_id: int
    label: str
    build_top1: float | None
    active_build_id: int | None
    active_top1: float | None

    @property
    def is_worse(self) -> bool:
        """Lower than the active build's. A build without figures (made before they were
        measured) is not called worse: there is nothing to compare."""
        return (
            self.active_build_id not in (None, self.build_id)
            and self.build_top1 is not None
            and self.active_top1 is not None
            and self.build_top1 < self.active_top1
        )

    @property
    def label_name(self) -> str:
        return gettext("defect type") if self.label == DEFECT_LABEL else gettext("product")

    def details(self) -> dict[str, Any]:
        return {
            "build_id": self.build_id,
            "active_build_id": self.active_build_id,
            "label": self.label,
            "build_top1": self.build_top1,
            "active_top1": self.active_top1,
        }


def build_quality_comparison(*, build: IndexBuild) -> QualityComparison:
    """`build`'s top-1 accuracy on its main label against the active build's: the one rule that
    the admin's activate action and the API's activate endpoint both ask before promoting."""
    active = (
        IndexBuild.objects.filter(image_type=build.image_type, engine=build.engine, is_active=True)
        .only("pk", "quality")
        .first()
    )
    return QualityComparison(
        build_id=build.pk,
        label=labels_for(build.image_type)[0],
        build_top1=main_top1(build.quality),
        active_build_id=active.pk if active else None,
        active_top1=main_top1(active.quality) if active else None,
    )


# --- activate, clean up -------------------------------------------------------------------


def index_build_activate(*, build: IndexBuild, allow_worse: bool = True) -> IndexBuild:
    """Make `build` the one active build of its image type and engine (promote or roll back).
    With `allow_worse=False` (a person asked, the admin or the API), a build whose top-1 accuracy
    is below the active build's is refused with a Conflict (code worse_than_active) that states
    both figures; the caller asks for confirmation and calls again with `allow_worse=True`."""
    if build.status != BuildStatus.READY:
        raise Conflict(
            gettext("Build %(id)s is %(status)s; only a ready build can be activated.")
            % {"id": build.pk, "status": build.get_status_display().lower()},
            code="not_ready",
        )
    with transaction.atomic():
        # Lock the current active row so two activations cannot interleave.
        list(
            IndexBuild.objects.select_for_update().filter(
                image_type=build.image_type, engine=build.engine, is_active=True
            )
        )
        if not allow_worse:
            comparison = build_quality_comparison(build=build)
            if comparison.is_worse:
                raise Conflict(
                    gettext(
                        "Build %(id)s is worse than the active build %(active)s: top-1 %(label)s accuracy "
                        "%(build_top1).1f%% against %(active_top1).1f%%. Confirm to activate it anyway "
                        '(API: {"confirm": true}).'
                    )
                    % {
                        "id": build.pk,
                        "active": comparison.active_build_id,
                        "label": comparison.label_name,
                        "build_top1": 100 * (comparison.build_top1 or 0),
                        "active_top1": 100 * (comparison.active_top1 or 0),
                    },
                    code="worse_than_active",
                    details=comparison.details(),
                )
        IndexBuild.objects.filter(image_type=build.image_type, engine=build.engine, is_active=True).exclude(
            pk=build.pk
        ).update(is_active=False)
        if not IndexBuild.objects.filter(pk=build.pk, status=BuildStatus.READY).update(
            is_active=True, activated_at=timezone.now()
        ):
            # Pruned since the caller read it; the rollback above keeps the current build active.
            raise NotFound(gettext("Build %(id)s no longer exists (old builds are pruned).") % {"id": build.pk})
    build.refresh_from_db()
    return build


def builds_prune(*, keep: int | None = None, image_type: str | None = None, engine: str | None = None) -> list[int]:
    """Delete the files and rows of ready builds that are neither active nor among the `keep`
    (default SIMSEARCH_KEEP_BUILDS) most recently active other builds of their image type and
    engine: the rollback history stays `keep` builds long, and a build rolled back to is as
    recent as its rollback. Queued, running and failed builds are left alone. Returns the ids
    removed."""
    keep = settings.SIMSEARCH_KEEP_BUILDS if keep is None else keep
    if keep < 0:
        raise ValueError("keep must be 0 or more")
    ready = IndexBuild.objects.filter(status=BuildStatus.READY, is_active=False)
    if image_type:
        ready = ready.filter(image_type=image_type)
    if engine:
        ready = ready.filter(engine=engine)
    newest_first = ready.order_by(F("activated_at").desc(nulls_last=True), "-finished_at", "-id")
    seen: dict[tuple[str, str], int] = {}
    doomed: list[IndexBuild] = []
    for build in newest_first.only("pk", "engine", "image_type", "artifact_prefix"):
        key = (build.engine, build.image_type)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > keep:
            doomed.append(build)
    removed: list[int] = []
    for build in doomed:
        # The row goes first, locked and re-checked so a rollback to it meanwhile wins: nobody
        # loads a build without a row, so its files can then go.
        with transaction.atomic():
            row = IndexBuild.objects.select_for_update().filter(pk=build.pk, is_active=False).first()
            if row is None:
                continue
            row.delete()
        removed.append(build.pk)
        try:
            artifact_store.storage_delete(build.artifact_prefix)
        except Exception:
            logger.exception(
                "Build %s was pruned but its files under %s could not be deleted; remove them by hand",
                build.pk,
                build.artifact_prefix,
            )
    if removed:
        logger.info("Pruned %s old index builds: %s", len(removed), ", ".join(map(str, removed)))
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # A killed worker stays a zombie until its parent reaps it: that is dead too.
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def builds_fail_stale() -> int:
    """Mark failed the builds whose worker died (same host: its process is gone; any host:
    no progress for SIMSEARCH_BUILD_STALE_SECONDS) and queued builds no worker ever took."""
    now = timezone.now()
    stale_after = timedelta(seconds=settings.SIMSEARCH_BUILD_STALE_SECONDS)
    never_taken_after = timedelta(seconds=settings.Q_CLUSTER["retry"])
    host = socket.gethostname()
    failed = 0
    for build in IndexBuild.objects.filter(status__in=PENDING_STATUSES):
        reason, params = "", {"worker": build.worker}
        if build.status == BuildStatus.RUNNING:
            worker_host, _, pid = build.worker.rpartition(":")
            if worker_host == host and pid.isdigit() and not _process_alive(int(pid)):
                reason = gettext_noop("The worker process %(worker)s running this build has died.")
            elif build.heartbeat_at and now - build.heartbeat_at > stale_after:
                reason = gettext_noop("The worker %(worker)s stopped reporting progress at %(heartbeat)s.")
                params["heartbeat"] = f"{build.heartbeat_at:%Y-%m-%d %H:%M:%S}"
        elif now - build.created_at > never_taken_after:
            reason = gettext_noop("No task-queue worker picked this build up; is the qcluster running?")
        if reason:
            # The row keeps the words in the site's language, whoever's request ran this sweep;
            # the log keeps them in English.
            with translation.override(settings.LANGUAGE_CODE):
                error = gettext(reason) % params
            updated = IndexBuild.objects.filter(pk=build.pk, status=build.status).update(
                status=BuildStatus.FAILED, finished_at=now, error=error
            )
            if updated:
                failed += 1
                logger.warning("Build %s marked failed: %s", build.pk, reason % params)
                _remove_artifacts(build)
    return failed
