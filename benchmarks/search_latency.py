"""In-process search latency as a ratio to the bare work (query embedding + FAISS search), with
ViT-B-32 (untrained) and a 10,000-image index. The request goes through Django's whole stack
(middleware, token auth, upload validation, response with storage links).

    .venv/bin/python -m benchmarks.search_latency [--vectors 10000] [--queries 60]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from benchmarks.common import Row, Table, part_photo, setup_django


def install_index(vectors: int, dim: int, fingerprint: str, embedder) -> int:  # type: ignore[no-untyped-def]
    """An active build of `vectors` random unit vectors (flat search cost does not depend on
    their content), written and registered the way a real build is."""
    from django.utils import timezone

    from indexing import artifact_store
    from indexing.artifacts import MANIFEST_FILE, pack_artifacts, sha256_hex
    from indexing.models import IndexBuild

    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(vectors, dim)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    ids = np.arange(1, vectors + 1)
    build = IndexBuild.objects.create(
        image_type="defect", model_name=embedder.model_name, pretrained=embedder.pretrained, status="running"
    )
    records = [
        {
            "image_id": int(i),
            "local_path": f"images/defect/bench/{i}.jpg",
            "product_code": f"p{i % 7}",
            "product_name": "제품",
            "defect_code": f"d{i % 4}",
            "defect_name": "긁힘",
            "defect_name_en": "Scratch",
            "image_type": "defect",
            "sha256": "",
        }
        for i in ids
    ]
    manifest = {
        "build_id": build.pk,
        "engine": "v2",
        "image_type": "defect",
        "model_name": embedder.model_name,
        "pretrained": embedder.pretrained,
        "is_untrained": True,
        "model_fingerprint": fingerprint,
        "dim": dim,
        "created_at": timezone.now().isoformat(),
    }
    files = pack_artifacts(ids=ids, vectors=matrix, metadata=records, manifest=manifest)
    prefix = f"index-builds/v2/defect/bench-{build.pk}"
    artifact_store.storage_write(prefix, files)
    IndexBuild.objects.filter(pk=build.pk).update(
        status="ready",
        artifact_prefix=prefix,
        vector_count=vectors,
        manifest_sha256=sha256_hex(files[MANIFEST_FILE]),
        model_fingerprint=fingerprint,
        is_active=True,
    )
    return build.pk


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def main(table: Table | None = None, vectors: int = 10_000, queries: int = 60) -> Table:
    table = table or Table()
    setup_django()
    from django.contrib.auth import get_user_model
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.test import Client
    from rest_framework.authtoken.models import Token

    from indexing.runtime import current_embedder
    from indexing.vector_index import search
    from search_api.index_cache import index_cache

    embedder = current_embedder()
    install_index(vectors, embedder.dim, embedder.fingerprint, embedder)
    loaded = index_cache.get(engine="v2", image_type="defect")
    assert loaded is not None and loaded.size == vectors
    user = get_user_model().objects.create_user("bench")
    client = Client(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    photos = [part_photo(seed, 224) for seed in range(queries)]

    def bare(photo: bytes) -> float:
        start = time.perf_counter()
        search(loaded.index, embedder.encode_image_bytes(photo)[0], 5)
        return time.perf_counter() - start

    def full(photo: bytes) -> float:
        start = time.perf_counter()
        response = client.post("/api/search/similarity/", {"image": SimpleUploadedFile("q.jpg", photo), "top_k": 5})
        elapsed = time.perf_counter() - start
        assert response.status_code == 200, response.content
        return elapsed

    for photo in photos[:5]:  # warm-up: allocator, caches, first request
        bare(photo)
        full(photo)
    bare_times, full_times = [], []
    for photo in photos:  # interleaved, so drift affects both alike
        bare_times.append(bare(photo))
        full_times.append(full(photo))
    p50_bare, p50_full = statistics.median(bare_times), statistics.median(full_times)
    table.add(
        Row(
            f"search latency in-process, {vectors:,}-vector index",
            f"p50 {p50_full * 1000:.1f} ms vs bare {p50_bare * 1000:.1f} ms; "
            f"p99 {percentile(full_times, 99) * 1000:.1f} ms",
            p50_full / p50_bare - 1,
            "overhead <= 0.15",
            f"{queries} queries, 224 px JPEG upload, top_k 5; bare = embed + FAISS search",
        )
    )
    # The search history row each search writes (one INSERT), against the whole search.
    from search_api.services import SearchInput, search_log_record, search_run

    query = SearchInput(top_k=5, image_type="defect", upload=photos[0])
    answered = search_run(query=query, user=user)
    record_times = []
    for _ in range(queries):
        start = time.perf_counter()
        search_log_record(query=query, kind="upload", reference="0" * 64, result=answered, user=user)
        record_times.append(time.perf_counter() - start)
    p50_record = statistics.median(record_times)
    table.add(
        Row(
            "search history: recording one search",
            f"p50 {p50_record * 1000:.2f} ms of the search p50 {p50_full * 1000:.1f} ms",
            p50_record / p50_full,
            "<= 0.05 of the search p50",
            "one SearchLog INSERT per search (SQLite here; PostgreSQL in production)",
        )
    )
    return table


def cli(argv: list[str] | None = None) -> Table:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vectors", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=60)
    return main(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    print(cli().render())
