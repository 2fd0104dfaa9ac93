"""Builds spread over workers (issue 12): a queued build's images to embed are chunks that every
qcluster worker on the broker may take; the build merges them from the embedding cache."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest

from catalog.models import ImageType
from catalog.services import image_create
from indexing.embedder import Embedder
from indexing.models import BuildChunk, BuildStatus, CachedEmbedding, ChunkStatus, IndexBuild
from indexing.quality import index_vectors
from indexing.services import index_build_request, index_build_run
from search_api.index_cache import index_cache
from tests.conftest import running_qcluster
from tests.helpers import image_bytes, wait_until


def add_gallery(product, defect_type, count: int) -> None:  # type: ignore[no-untyped-def]
    for seed in range(count):
        image_create(
            data=image_bytes(size=(320, 240), seed=seed),
            image_type=ImageType.DEFECT,
            product=product,
            defect_type=defect_type,
        )


def served_vectors() -> dict[int, np.ndarray]:
    index_cache.reset()
    ids, vectors = index_vectors(index_cache.get(engine="v2", image_type="defect").index)
    return {int(i): vector for i, vector in zip(ids, vectors, strict=True)}


@pytest.mark.django_db
def test_a_queued_build_embeds_in_chunks_and_gives_the_same_index(product, scratch, settings):
    add_gallery(product, scratch, 10)
    settings.SIMSEARCH_BUILD_CHUNK_SIZE = 4
    (build,) = index_build_request(index_type="defect", enqueue=False)
    build = index_build_run(build_id=build.pk, distributed=True)  # no other worker: it does all 3 itself
    assert build.status == BuildStatus.READY, build.error
    assert build.timings["chunks"] == 3 and build.timings["chunk_workers"] == [f"{socket.gethostname()}:{os.getpid()}"]
    assert build.embedded_count == 10 and not BuildChunk.objects.exists()
    chunked = served_vectors()

    CachedEmbedding.objects.all().delete()
    settings.SIMSEARCH_BUILD_CHUNK_SIZE = 0  # the same images, embedded by the build's task alone
    (plain,) = index_build_request(index_type="defect", enqueue=False)
    plain = index_build_run(build_id=plain.pk, distributed=True)
    assert "chunks" not in plain.timings and plain.embedded_count == 10
    again = served_vectors()
    assert chunked.keys() == again.keys()
    assert all(np.allclose(chunked[i], again[i], atol=1e-5) for i in chunked)


@pytest.mark.django_db
def test_a_chunk_whose_worker_died_is_taken_again_and_redoes_only_what_was_not_cached(
    product, scratch, settings, monkeypatch
):
    add_gallery(product, scratch, 6)
    settings.SIMSEARCH_BUILD_CHUNK_SIZE = 3
    calls: list[int] = []
    original = Embedder.encode_images

    def embed_and_meanwhile(self, loaders, **kwargs):  # type: ignore[no-untyped-def]
        """The embedder, counting images; while the build's task embeds its first chunk, a helper
        on this host takes the second, caches one of its images and dies (real rows)."""
        calls.append(len(loaders))
        if len(calls) == 1:
            chunk = BuildChunk.objects.get(number=1)
            image_id, sha, _, _ = chunk.sources[0]
            data = image_create_bytes(image_id)
            vector = original(self, [lambda: data], batch_size=1).vectors[0]
            CachedEmbedding.objects.create(sha256=sha, model_fingerprint=self.fingerprint, vector=vector.tobytes())
            BuildChunk.objects.filter(pk=chunk.pk).update(
                status=ChunkStatus.RUNNING, attempts=1, worker=f"{socket.gethostname()}:{2**22 + 17}"
            )
        return original(self, loaders, **kwargs)

    monkeypatch.setattr(Embedder, "encode_images", embed_and_meanwhile)
    (build,) = index_build_request(index_type="defect", enqueue=False)
    build = index_build_run(build_id=build.pk, distributed=True)
    assert build.status == BuildStatus.READY, build.error
    # Chunk 0: 3 images; chunk 1 was put back when its worker was found dead, and the build's
    # task embedded only the 2 images the dead worker had not cached.
    assert calls == [3, 2] and build.timings["chunks"] == 2 and build.vector_count == 6
    assert build.embedded_count == 6 and build.timings["chunk_workers"] == [f"{socket.gethostname()}:{os.getpid()}"]


def image_create_bytes(image_id: int) -> bytes:
    from catalog.models import Image
    from catalog.storage import read_object

    return read_object(Image.objects.get(pk=image_id).file.name)


def test_a_rebuild_is_shared_by_the_workers_of_a_real_qcluster(transactional_db, product, scratch, tmp_path):
    add_gallery(product, scratch, 48)
    (build,) = index_build_request(index_type="defect", enqueue=False)
    IndexBuild.objects.filter(pk=build.pk).delete()
    with running_qcluster(tmp_path / "qcluster.log", SIMSEARCH_BUILD_CHUNK_SIZE="2", SIMSEARCH_QUEUE_WORKERS="2"):
        from django.db import transaction
        from django_q.tasks import async_task

        # Both workers load their model first: otherwise the build's own worker may embed all 24
        # small chunks before the other has loaded one (seen: 1 run in 8).
        warm = tmp_path / "warm"
        warm.mkdir()
        for _ in range(2):
            async_task("tests.helpers.warm_queue_worker", str(warm), 2)
        wait_until(lambda: len(list(warm.iterdir())) == 2, timeout=90)
        with transaction.atomic():
            (build,) = index_build_request(index_type="defect")
        wait_until(
            lambda: IndexBuild.objects.get(pk=build.pk).status not in (BuildStatus.QUEUED, BuildStatus.RUNNING),
            timeout=180,
        )
    build.refresh_from_db()
    assert build.status == BuildStatus.READY, build.error
    assert build.timings["chunks"] == 24 and build.embedded_count == 48
    # The build's own task and a helper task, in two worker processes, each embedded chunks.
    assert len(build.timings["chunk_workers"]) == 2, build.timings


@pytest.mark.django_db
@pytest.mark.parametrize("failures", [1, 3])
def test_a_failed_chunk_is_retried_and_fails_the_build_after_three_attempts(
    product, scratch, settings, monkeypatch, failures
):
    add_gallery(product, scratch, 4)
    settings.SIMSEARCH_BUILD_CHUNK_SIZE = 2
    original = Embedder.encode_images
    left = {"failures": failures}

    def flaky(self, loaders, **kwargs):  # type: ignore[no-untyped-def]
        if left["failures"]:
            left["failures"] -= 1
            raise OSError("storage hiccup")
        return original(self, loaders, **kwargs)

    monkeypatch.setattr(Embedder, "encode_images", flaky)
    (build,) = index_build_request(index_type="defect", enqueue=False)
    build = index_build_run(build_id=build.pk, distributed=True)
    if failures == 1:
        assert build.status == BuildStatus.READY and build.embedded_count == 4
    else:
        assert build.status == BuildStatus.FAILED and "storage hiccup" in build.error
        assert not IndexBuild.objects.filter(is_active=True).exists()
