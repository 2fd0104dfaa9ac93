"""FAISS index build / search / (de)serialisation. Django-free.

Vectors are L2-normalised, so inner product is cosine similarity. Ids are catalog image ids
(V2) or positions in the legacy folder listing (V1).

A serving index is exact (flat) up to `exact_max` vectors and an inverted-file index (IVF-Flat)
above: a flat search reads every vector (about 150 ms per million on 2 cores), an IVF search only
the `nprobe` lists nearest the query. The build measures recall@10 of the IVF index against exact
search on a seeded sample of its own vectors and raises `nprobe` until the target is met, so the
figure stored with the build is what this gallery gets. IVF rather than HNSW: its lists are plain
arrays that FAISS memory-maps (every process on a host shares one copy in the page cache; an HNSW
graph is copied into each process), and a filter only changes how many lists are read."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

FLAT = "flat"
IVF = "ivf"
RECALL_K = 10
# Lists read by a search start here and double until the build's recall target is met.
FIRST_NPROBE = 8
# A filter allowing at most 1/SELECTIVE of the vectors is searched among its vectors alone.
# Measured at a million (README, Sizing): ...
SELECTIVE = 32
# Read-only memory map of flat codes and inverted lists (FAISS >= 1.11).
MMAP_FLAGS = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY


def build_index(vectors: np.ndarray, ids: np.ndarray) -> faiss.Index:
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise ValueError(f"vectors {vectors.shape} and ids {ids.shape} do not match")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    faiss.normalize_L2(vectors)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    if len(vectors):
        index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
    return index


@dataclass(frozen=True)
class ServingIndex:
    """A build's index and what its build measured (the manifest's "index" entry)."""

    index: faiss.Index
    info: dict[str, Any] = field(default_factory=dict)


def ivf_lists(n: int) -> int:
    """Inverted lists for n vectors: about 2·√n, a power of two (2048 at a million), with at least
    39 training vectors per list. Training costs grow with the square of the lists (4·√n took
    5 minutes to train at a million on this 2-core machine)."""
    lists = 2 ** round(math.log2(max(1.0, 2 * math.sqrt(n))))
    return max(1, min(lists, n // 39))


def build_serving_index(
    vectors: np.ndarray,
    ids: np.ndarray,
    *,
    exact_max: int,
    recall_target: float = 0.95,
    recall_queries: int = 1000,
    seed: int = 0,
) -> ServingIndex:
    """Flat up to `exact_max` vectors, IVF-Flat above it, with recall@10 against exact search."""
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise ValueError(f"vectors {vectors.shape} and ids {ids.shape} do not match")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    faiss.normalize_L2(vectors)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    n, dim = vectors.shape
    if n <= exact_max:
        # IndexIDMap, not IDMap2: no id -> position hash map in every serving process.
        index = faiss.IndexIDMap(faiss.IndexFlatIP(dim))
        if n:
            index.add_with_ids(vectors, ids)
        return ServingIndex(index, {"kind": FLAT, "exact_max": exact_max, "recall_at_10": 1.0})
    lists = ivf_lists(n)
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
    # 64 training vectors per list and 10 k-means rounds: a minute or two at a million on 2 cores,
    # a small cost next to embedding a million photos; recall is measured below either way.
    ivf.cp.max_points_per_centroid, ivf.cp.niter, ivf.cp.seed = 64, 10, seed
    ivf.train(vectors)
    index = faiss.IndexIDMap(ivf)
    index.add_with_ids(vectors, ids)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(recall_queries, n), replace=False))
    exact = _exact_neighbours(vectors, rows)
    nprobe = min(FIRST_NPROBE, lists)
    while True:
        ivf.nprobe = nprobe
        recall = _recall(index, vectors, rows, ids, exact)
        if recall >= recall_target or nprobe >= lists:
            break
        nprobe = min(lists, nprobe * 2)
    info = {
        "kind": IVF,
        "exact_max": exact_max,
        "nlist": lists,
        "nprobe": nprobe,
        "recall_at_10": round(recall, 4),
        "recall_queries": len(rows),
        "recall_target": recall_target,
    }
    return ServingIndex(index, info)


def _exact_neighbours(vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows of the RECALL_K nearest other vectors of each sampled row (FAISS brute force)."""
    _, found = faiss.knn(vectors[rows], vectors, RECALL_K + 1, metric=faiss.METRIC_INNER_PRODUCT)
    return np.array([[r for r in hits if r != row][:RECALL_K] for row, hits in zip(rows, found, strict=True)])


def _recall(index: faiss.Index, vectors: np.ndarray, rows: np.ndarray, ids: np.ndarray, exact: np.ndarray) -> float:
    _, found = index.search(vectors[rows], RECALL_K + 1)
    total = 0
    for row, hits, truth in zip(rows, found, exact, strict=True):
        own = ids[row]
        approximate = [i for i in hits if i != own][:RECALL_K]
        total += len(set(approximate) & set(ids[truth].tolist()))
    return total / max(1, len(rows) * RECALL_K)


def _selector(allowed_ids: np.ndarray) -> tuple[faiss.IDSelector, np.ndarray]:
    """An id selector for `allowed_ids` and the array it reads (keep it alive while searching).
    A bitmap over the id range is built in a millisecond for a million ids where a hash set
    (IDSelectorBatch) takes tens; the hash set stays for few ids spread over a wide range."""
    allowed_ids = np.ascontiguousarray(allowed_ids, dtype=np.int64)
    top = int(allowed_ids.max())
    if int(allowed_ids.min()) >= 0 and top < 64 * len(allowed_ids):
        mask = np.zeros(top + 1, dtype=bool)
        mask[allowed_ids] = True
        bits = np.packbits(mask, bitorder="little")
        return faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits)), bits
    return faiss.IDSelectorBatch(allowed_ids), allowed_ids


def search(
    index: faiss.Index, query: np.ndarray, k: int, *, allowed_ids: np.ndarray | None = None
) -> list[tuple[int, float]]:
    """Top-k (id, cosine) for one query vector, best first. With `allowed_ids`, only those ids
    are considered, inside FAISS, so k results come back whenever k allowed ids exist.

    A filter that allows at most 1/SELECTIVE of the vectors is answered by an exact search over
    the allowed vectors alone (read from the index by position). Otherwise an IVF index reads the
    lists nearest the query until no unread list can hold a nearer allowed vector
    (`_search_ivf_filtered`), and every list when those it read hold fewer than k."""
    query = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
    faiss.normalize_L2(query)
    k = min(k, index.ntotal)
    if k <= 0 or (allowed_ids is not None and len(allowed_ids) == 0):
        return []
    # One query, one thread: the serving processes and threads are the parallelism, and OpenMP
    # threads of one search contending with them made a flat search of a million vectors 7x slower
    # on a busy 2-core host (87 ms with 1 thread, 655 ms with 2). Set per calling thread.
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        if allowed_ids is not None and len(allowed_ids) * SELECTIVE <= index.ntotal:
            hits = _search_among(index, query, k, np.ascontiguousarray(allowed_ids, dtype=np.int64))
            if hits is not None:
                return hits
        return _search_index(index, query, k, allowed_ids)
    finally:
        faiss.omp_set_num_threads(threads)


def _search_index(
    index: faiss.Index, query: np.ndarray, k: int, allowed_ids: np.ndarray | None
) -> list[tuple[int, float]]:
    ivf = faiss.try_extract_index_ivf(index)
    if allowed_ids is not None and _lists_searchable(index, ivf):
        return _search_ivf_filtered(index, ivf, query, k, np.ascontiguousarray(allowed_ids, dtype=np.int64))
    selector, keep = _selector(allowed_ids) if allowed_ids is not None else (None, None)
    if ivf is None:
        hits = _search_once(index, query, k, faiss.SearchParameters(sel=selector) if selector else None)
    else:  # unfiltered, the build's nprobe; filtered (an IVF this module did not build), every list
        nprobe = ivf.nprobe if selector is None else ivf.nlist
        hits = _search_once(index, query, k, faiss.SearchParametersIVF(sel=selector, nprobe=nprobe))
        if len(hits) < k and nprobe < ivf.nlist:
            hits = _search_once(index, query, k, faiss.SearchParametersIVF(nprobe=ivf.nlist))
    del keep  # the selector reads it until here
    return hits


def _lists_searchable(index: faiss.Index, ivf: faiss.IndexIVF | None) -> bool:
    """Whether `_search_ivf_filtered` can read the lists of `ivf` itself: an inner-product IVF
    index, bare or under an id map (every IVF build)."""
    if ivf is None or ivf.metric_type != faiss.METRIC_INNER_PRODUCT:
        return False
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2) else index
    return isinstance(inner, faiss.IndexIVF)


def _search_ivf_filtered(
    index: faiss.Index, ivf: faiss.IndexIVF, query: np.ndarray, k: int, allowed: np.ndarray
) -> list[tuple[int, float]]:
    """Top-k among `allowed`: the lists nearest the query are read in rounds that double the
    lists read, until no unread list is likely to hold an allowed vector nearer than the k-th found.

    "Likely" is measured on this query. The build chose `nprobe` so that an unfiltered search
    finds enough of the true top k: its k-th hit (score s) lies in the lists down to the
    `nprobe`-th (centroid score c), a reach of s - c. A filtered k-th hit scores s' <= s and is
    looked for as far below it: in the lists with centroid score >= s' - (s - c). Without a filter
    that is the build's `nprobe` lists. At a million (benchmarks.search_latency), a filter to 1/7
    of the ids independent of the query reads 4x the lists, not 7x (the old rule: as many allowed
    vectors as an unfiltered search); one to whole products far from the query reads many more, at
    recall 0.92 where the old rule got 0.62; and lists that hold fewer than k allowed ids lead to
    every list."""
    selector, keep, labels = _ivf_selector(index, allowed)
    centroid_scores, lists = ivf.quantizer.search(query, ivf.nlist)
    nprobe = min(ivf.nprobe, ivf.nlist)
    unfiltered, _ = _search_lists(ivf, query, k, lists, centroid_scores, 0, nprobe, None)
    reach = unfiltered[-1] - centroid_scores[0, nprobe - 1] if len(unfiltered) == k else math.inf
    scores, found = np.empty(0, dtype=np.float32), np.empty(0, dtype=np.int64)
    read, needed = 0, nprobe
    while read < needed:
        upto = min(ivf.nlist, max(nprobe, 2 * read))
        more_scores, more = _search_lists(ivf, query, k, lists, centroid_scores, read, upto, selector)
        scores, found = np.concatenate([scores, more_scores]), np.concatenate([found, more])
        best = np.argsort(-scores, kind="stable")[:k]
        scores, found, read = scores[best], found[best], upto
        needed = ivf.nlist if len(found) < k else int(np.count_nonzero(centroid_scores[0] >= scores[-1] - reach))
    del keep  # the selector reads it until here
    ids = found if labels is None else labels[found]
    return [(int(i), float(s)) for i, s in zip(ids, scores, strict=True)]


def _search_lists(
    ivf: faiss.IndexIVF,
    query: np.ndarray,
    k: int,
    lists: np.ndarray,
    centroid_scores: np.ndarray,
    first: int,
    end: int,
    selector: faiss.IDSelector | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, ids as the IVF stores them) in lists[0, first:end], best first, among the
    ids `selector` accepts (it is asked before a distance is computed)."""
    assigned = np.ascontiguousarray(lists[:, first:end])
    assigned_scores = np.ascontiguousarray(centroid_scores[:, first:end])
    scores, found = np.empty((1, k), dtype=np.float32), np.empty((1, k), dtype=np.int64)
    ivf.search_preassigned_c(
        1,
        faiss.swig_ptr(query),
        k,
        faiss.swig_ptr(assigned),
        faiss.swig_ptr(assigned_scores),
        faiss.swig_ptr(scores),
        faiss.swig_ptr(found),
        False,
        faiss.SearchParametersIVF(sel=selector, nprobe=end - first),
        None,
    )
    kept = found[0] >= 0
    return scores[0][kept], found[0][kept]


def _ivf_selector(index: faiss.Index, allowed: np.ndarray) -> tuple[faiss.IDSelector, Any, np.ndarray | None]:
    """A selector over the ids the IVF lists hold, what it reads (keep it alive while searching),
    and the catalog id of each (None where the lists hold catalog ids). Under an id map the lists
    hold positions: a bitmap over them is checked without a memory access of its own, where FAISS's
    own way (translate each position read to its catalog id, then check that) misses the cache in
    an 8 MB array once per vector read: 40% of the time of a 1/7 filter at a million."""
    if not isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):
        selector, keep = _selector(allowed)
        return selector, keep, None
    id_map = faiss.rev_swig_ptr(index.id_map.data(), index.ntotal)  # a view, not a copy
    held = _held_positions(id_map, allowed)
    if held is None:
        selector, keep = _selector(allowed)
        return faiss.IDSelectorTranslated(index.id_map, selector), (selector, keep), id_map
    bits = np.packbits(held, bitorder="little")
    return faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits)), bits, id_map


def _held_positions(id_map: np.ndarray, allowed: np.ndarray) -> np.ndarray | None:
    """Per position of `id_map`, whether it holds an allowed id; None where the ids are negative
    or reach past 8 per position (a mask over them would cost more than it saves)."""
    n = len(id_map)
    first = int(id_map[0])
    if int(id_map[-1]) - first == n - 1:  # consecutive ids, as builds store them: O(allowed)
        positions = allowed - first
        if positions.min() >= 0 and positions.max() < n and np.array_equal(id_map[positions], allowed):
            held = np.zeros(n, dtype=bool)
            held[positions] = True
            return held
    low, high = int(id_map.min()), int(id_map.max())
    if low < 0 or high >= 8 * n:
        return None
    wanted = np.zeros(high + 1, dtype=bool)
    wanted[allowed[(allowed >= 0) & (allowed <= high)]] = True
    return np.take(wanted, id_map)


def _search_among(index: faiss.Index, query: np.ndarray, k: int, allowed: np.ndarray) -> list[tuple[int, float]] | None:
    """Exact top-k over the allowed vectors only, read by position: a selective filter then costs
    its own size, not a pass over every id. None where the index cannot give them that way (ids
    not stored in ascending order, as every build stores them; an id it does not hold; an IVF
    index without its direct map)."""
    if not isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):
        return None
    id_map = faiss.rev_swig_ptr(index.id_map.data(), index.ntotal)  # a view, not a copy
    positions = np.minimum(np.searchsorted(id_map, allowed), index.ntotal - 1)
    if not np.array_equal(id_map[positions], allowed):
        return None
    inner = faiss.downcast_index(index.index)
    ivf = faiss.try_extract_index_ivf(inner)
    if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
        return None
    vectors = inner.reconstruct_batch(positions)
    scores, rows = faiss.knn(query, vectors, min(k, len(allowed)), metric=faiss.METRIC_INNER_PRODUCT)
    return [(int(allowed[r]), float(s)) for r, s in zip(rows[0], scores[0], strict=True) if r != -1]


def _search_once(
    index: faiss.Index, query: np.ndarray, k: int, params: faiss.SearchParameters | None
) -> list[tuple[int, float]]:
    scores, ids = index.search(query, k, params=params)
    return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i != -1]


def prepared(index: faiss.Index) -> faiss.Index:
    """A loaded index made ready to serve: an IVF index gets its id -> list position map (8 bytes
    per vector in each process), so that selective filters can read their vectors directly."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.make_direct_map()
    return index


def serialize(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def deserialize(data: bytes) -> faiss.Index:
    """Only for bytes this system wrote (callers check the manifest hash first): a crafted
    index file can do harm."""
    return prepared(faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8)))


def read_mapped(path: Path) -> faiss.Index:
    """The index in `path`, its vectors (flat codes or inverted lists) memory-mapped read-only:
    processes that map the same file share one copy in the page cache. Same warning as above."""
    return prepared(faiss.read_index(str(path), MMAP_FLAGS))
