"""Search latency, in two parts.

1. In-process search latency as a ratio to the bare work (query embedding + FAISS search), with
   ViT-B-32 (untrained) and a 10,000-image index. The request goes through Django's whole stack
   (middleware, token auth, upload validation, response with storage links).
2. Scale (`--scale-vectors`, 1,000,000 x 512 by default; 0 skips it): synthetic catalog-like
   vectors in an exact (flat) and an approximate (IVF) build, each registered as an active build
   and loaded by fresh worker processes through the serving code (index_cache: copy from storage to
   the local cache, verify, memory-map). Reports p50 search latency of each kind with and without
   filters, recall@10 against FAISS exact search on held-out queries, the numpy matrix-vector floor
   on the same vectors, the memory a second worker on the host adds (/proc/<pid>/smaps_rollup) and
   the time from activation to the first answer. About 6 minutes at a million on 2 cores.

    .venv/bin/python -m benchmarks.search_latency [--vectors 10000] [--queries 60] [--scale-vectors 1000000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Row, Table, part_photo, setup_django


def install_index(vectors: int, dim: int, fingerprint: str, embedder) -> int:  # type: ignore[no-untyped-def]
    """An active build of `vectors` random unit vectors (flat search cost does not depend on
    their content), written and registered the way a real build is."""
    from django.utils import timezone

    from indexing import artifact_store
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
    prefix = f"index-builds/v2/defect/bench-{build.pk}"
    manifest_sha256 = artifact_store.pack_to_storage(
        prefix, ids=ids, vectors=matrix, metadata=records, manifest=manifest
    )
    IndexBuild.objects.filter(pk=build.pk).update(
        status="ready",
        artifact_prefix=prefix,
        vector_count=vectors,
        manifest_sha256=manifest_sha256,
        model_fingerprint=fingerprint,
        is_active=True,
    )
    return build.pk


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def main(table: Table | None = None, vectors: int = 10_000, queries: int = 60, scale_vectors: int = 1_000_000) -> Table:
    table = table or Table()
    data_dir = setup_django()
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
    if scale_vectors:
        scale(table, vectors=scale_vectors, data_dir=data_dir)
    return table


def cli(argv: list[str] | None = None) -> Table:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vectors", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--scale-vectors", type=int, default=1_000_000)
    return main(**vars(parser.parse_args(argv)))


# --- scale: a million vectors per host -------------------------------------------------------------

DIM = 512
SCALE_QUERIES = 200
FLAT_QUERIES = 40  # a flat search of a million vectors takes ~150 ms: fewer of them
DEFECT_TYPES = 7


def catalog_vectors(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors shaped like a catalog's embeddings, and the product of each: a direction
    every photo shares, one per product (a product per 1,000 photos), 32 directions of variation
    (pose, light, wear) shared by all products, and noise; weights 0.5 / 0.45 / 0.6 / 0.45 give a
    nearest neighbour at cosine ~0.65 and a random pair at ~0.26. Uniformly random vectors have no
    neighbours to speak of (no index but flat reaches recall 0.95 on them); a real gallery's
    recall is measured by its build."""
    rng = np.random.default_rng(seed)
    products = max(1, n // 1000)
    common = rng.standard_normal(DIM, dtype=np.float32)
    centres = rng.standard_normal((products, DIM), dtype=np.float32)
    variation = rng.standard_normal((32, DIM), dtype=np.float32) / np.sqrt(DIM)
    common /= np.linalg.norm(common)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    which = rng.integers(products, size=n)
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 100_000):
        end = min(n, start + 100_000)
        z = rng.standard_normal((end - start, 32), dtype=np.float32) / np.sqrt(32)
        noise = rng.standard_normal((end - start, DIM), dtype=np.float32) / np.sqrt(DIM)
        out[start:end] = 0.5 * common + 0.45 * centres[which[start:end]] + 0.6 * (z @ variation) + 0.45 * noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out, which


def _records(ids: np.ndarray, products: np.ndarray) -> list[dict]:
    return [
        {
            "image_id": int(i),
            "local_path": f"images/defect/2026/11/{i:08d}.jpg",
            "product_code": f"p{p}",
            "product_name": f"제품 {p}",
            "defect_code": f"d{i % DEFECT_TYPES}",
            "defect_name": "긁힘",
            "defect_name_en": "Scratch",
            "image_type": "defect",
            "sha256": f"{i:064x}",
        }
        for i, p in zip(ids.tolist(), products.tolist(), strict=True)
    ]


def _register(kind: str, image_type: str, served, records: bytes) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Write the build's serving files to storage and make it the active build of `image_type`;
    (build id, index file bytes)."""
    import faiss
    from django.core.files.storage import default_storage

    from indexing.artifacts import INDEX_FILE, MANIFEST_FILE, RECORDS_FILE, sha256_hex
    from indexing.models import IndexBuild
    from indexing.runtime import current_embedder

    embedder = current_embedder()
    build = IndexBuild.objects.create(
        image_type=image_type, model_name=embedder.model_name, pretrained=embedder.pretrained, status="running"
    )
    prefix = f"index-builds/v2/{image_type}/bench-{kind}-{build.pk}"
    folder = Path(default_storage.path(prefix))
    folder.mkdir(parents=True)
    faiss.write_index(served.index, str(folder / INDEX_FILE))  # written directly: no 2 GB copy in memory
    (folder / RECORDS_FILE).write_bytes(records)
    files = {}
    for name in (INDEX_FILE, RECORDS_FILE):
        with (folder / name).open("rb") as handle:
            files[name] = {"sha256": hashlib.file_digest(handle, "sha256").hexdigest()}
        files[name]["bytes"] = (folder / name).stat().st_size
    manifest = json.dumps(
        {
            "build_id": build.pk,
            "engine": "v2",
            "image_type": image_type,
            "model_name": embedder.model_name,
            "pretrained": embedder.pretrained,
            "model_fingerprint": embedder.fingerprint,
            "dim": DIM,
            "index": served.info,
            "format": 1,
            "files": files,
        }
    ).encode()
    (folder / MANIFEST_FILE).write_bytes(manifest)
    IndexBuild.objects.filter(is_active=True).update(is_active=False)  # workers load only this one
    IndexBuild.objects.filter(pk=build.pk).update(
        status="ready",
        artifact_prefix=prefix,
        vector_count=served.index.ntotal,
        manifest_sha256=sha256_hex(manifest),
        model_fingerprint=embedder.fingerprint,
        is_active=True,
    )
    return build.pk, files[INDEX_FILE]["bytes"]


def _smaps() -> dict[str, int]:
    """KiB figures of this process from /proc/self/smaps_rollup."""
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return fields


def worker(image_type: str, data_dir: Path, queries: int) -> None:
    """A fresh serving process: loads the active build of `image_type` the way the API does,
    answers queries, prints what it measured (one JSON line), then waits for a line on stdin so
    that a second worker can be measured beside it."""
    setup_django(data_dir)
    from indexing.vector_index import search
    from search_api.index_cache import index_cache

    query = np.load(data_dir / "bench-queries.npy")[:queries]
    query_products = np.load(data_dir / "bench-query-products.npy")[:queries]
    before = _smaps()
    started = time.perf_counter()
    loaded = index_cache.get(engine="v2", image_type=image_type)
    assert loaded is not None
    search(loaded.index, query[0], 10)
    to_serving = time.perf_counter() - started
    floor = np.load(data_dir / "bench-vectors.npy", mmap_mode="r")
    times: dict[str, list[float]] = {"plain": [], "defect": [], "product": [], "floor": []}
    hits: dict[str, list[list[int]]] = {"plain": [], "defect": [], "product": []}
    for round_ in range(2):  # the first round warms the page cache and is not counted
        for number, (vector, product) in enumerate(zip(query, query_products, strict=True)):
            for name, codes in (("plain", None), ("defect", (None, "d0")), ("product", (f"p{product}", None))):
                start = time.perf_counter()
                allowed = None if codes is None else loaded.ids_matching(product_code=codes[0], defect_code=codes[1])
                found = search(loaded.index, vector, 10, allowed_ids=allowed)
                if round_:
                    times[name].append(time.perf_counter() - start)
                    hits[name].append([i for i, _ in found])
            if number < FLAT_QUERIES:
                start = time.perf_counter()
                np.asarray(floor @ vector)
                if round_:
                    times["floor"].append(time.perf_counter() - start)
    after = _smaps()
    added = {key: after.get(key, 0) - before.get(key, 0) for key in ("Rss", "Pss", "Anonymous")}
    print(
        "RESULT "
        + json.dumps(
            {
                "to_serving_s": to_serving,
                "p50_ms": {name: statistics.median(values) * 1000 for name, values in times.items()},
                "hits": hits,
                "added_kib": added,
                "index": loaded.manifest.get("index"),
            }
        ),
        flush=True,
    )
    sys.stdin.readline()


def _start_worker(image_type: str, data_dir: Path, queries: int) -> tuple[subprocess.Popen, dict]:
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.search_latency", "--worker", image_type, str(data_dir), str(queries)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "SIMSEARCH_INDEX_POLL_SECONDS": "3600"},
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("RESULT "):
            return process, json.loads(line[7:])
    raise RuntimeError(f"worker for {image_type} ended without a result (exit {process.wait()})")


def _recall(hits: list[list[int]], truth: list[list[int]]) -> float:
    return sum(len(set(h) & set(t)) for h, t in zip(hits, truth, strict=True)) / max(1, sum(len(t) for t in truth))


def scale(table: Table, *, vectors: int, data_dir: Path) -> None:
    import faiss

    from indexing.record_table import pack_records
    from indexing.vector_index import build_serving_index

    step = time.perf_counter()
    matrix, products = catalog_vectors(vectors + SCALE_QUERIES)
    queries, query_products = matrix[vectors:].copy(), products[vectors:]
    matrix, products = matrix[:vectors], products[:vectors]
    ids = np.arange(1, vectors + 1, dtype=np.int64)
    np.save(data_dir / "bench-vectors.npy", matrix)
    np.save(data_dir / "bench-queries.npy", queries)
    np.save(data_dir / "bench-query-products.npy", query_products)
    records = pack_records(_records(ids, products))
    print(f"scale: {vectors:,} vectors and records made in {time.perf_counter() - step:.0f} s", flush=True)
    # Ground truth: FAISS brute force on the vectors in memory.
    truth = {"plain": (ids[faiss.knn(queries, matrix, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]]).tolist()}
    d0 = ids % DEFECT_TYPES == 0
    truth["defect"] = ids[d0][faiss.knn(queries, matrix[d0], 10, metric=faiss.METRIC_INNER_PRODUCT)[1]].tolist()
    truth["product"] = []
    for vector, product in zip(queries, query_products, strict=True):
        rows = np.flatnonzero(products == product)
        found = faiss.knn(vector[None, :], matrix[rows], 10, metric=faiss.METRIC_INNER_PRODUCT)[1][0]
        truth["product"].append(ids[rows[found[found >= 0]]].tolist())
    results = {}
    for kind, image_type, exact_max in (("flat", "normal", vectors), ("ivf", "defect", 0)):
        step = time.perf_counter()
        served = build_serving_index(matrix, ids, exact_max=exact_max)
        build_s = time.perf_counter() - step
        _build_id, index_bytes = _register(kind, image_type, served, records)  # the only active build
        del served
        used = FLAT_QUERIES if kind == "flat" else SCALE_QUERIES
        first, cold = _start_worker(image_type, data_dir, used)
        second, warm = _start_worker(image_type, data_dir, used)
        for process in (first, second):
            process.communicate("exit\n")
        results[kind] = (cold, warm, build_s, index_bytes, used)
    floor = results["flat"][1]["p50_ms"]["floor"]
    for kind, (cold, warm, build_s, index_bytes, used) in results.items():
        p50, info = warm["p50_ms"], warm["index"]
        recalls = {name: _recall(warm["hits"][name], truth[name][:used]) for name in ("plain", "defect", "product")}
        if kind == "flat":
            name = f"exact (flat) search, {vectors:,} x {DIM}"
            table.add(
                Row(
                    name,
                    f"p50 {p50['plain']:.1f} ms vs numpy floor {floor:.1f} ms (same vectors, same run)",
                    p50["plain"] / floor,
                    "<= 1.2 x the floor",
                    f"filtered, one defect type (1/7): {p50['defect']:.1f} ms; one product (0.1%): "
                    f"{p50['product']:.1f} ms; recall@10 {recalls['plain']:.3f}",
                )
            )
        else:
            name = f"approximate (IVF {info['nlist']}, {info['nprobe']} lists read) search, {vectors:,} x {DIM}"
            table.add(
                Row(
                    name,
                    f"p50 {p50['plain']:.2f} ms, recall@10 {recalls['plain']:.3f} "
                    f"({p50['plain'] / floor:.3f} of the numpy floor)",
                    recalls["plain"],
                    "recall >= 0.95 at p50 < 10 ms",
                    f"{used} held-out queries; recall at build time {info['recall_at_10']} "
                    f"({info['recall_queries']} gallery vectors)",
                ),
                Row(
                    f"approximate search filtered, {vectors:,}",
                    f"one defect type (1/7): p50 {p50['defect']:.2f} ms, recall@10 {recalls['defect']:.3f}; "
                    f"one product (0.1%): p50 {p50['product']:.2f} ms, recall@10 {recalls['product']:.3f}",
                    min(recalls["defect"], recalls["product"]),
                    "k results, recall >= 0.95",
                    "recall against exact search over the allowed ids; time includes the filter's ids",
                ),
            )
        table.add(
            Row(
                f"{kind}: build, second worker's memory, activation to serving",
                f"built in {build_s:.0f} s; 2nd worker adds {warm['added_kib']['Anonymous'] / 1024:.0f} MiB private "
                f"(RSS {warm['added_kib']['Rss'] / 1024:.0f} MiB, PSS {warm['added_kib']['Pss'] / 1024:.0f} MiB) "
                f"for a {index_bytes / 2**20:.0f} MiB index; serving {cold['to_serving_s']:.1f} s after activation "
                f"(copy from storage), {warm['to_serving_s']:.1f} s from the local cache",
                warm["added_kib"]["Anonymous"] * 1024 / index_bytes,
                "private memory < 0.10 of the index",
                "index + records memory-mapped from the local cache: RSS counts the shared page cache, "
                "PSS splits it between the 2 workers",
            )
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
    else:
        print(cli().render())
