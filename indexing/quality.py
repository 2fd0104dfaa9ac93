"""Retrieval quality of an index build, measured on labelled vectors. Django-free: numpy + FAISS.

Two ways to measure:

- Leave-one-out (`evaluate_build`): every vector of a build (or a seeded sample of
  `MAX_QUERIES` when there are more) is a query against all the others. Left out of its own
  search are the query itself and every other vector with the same content hash: an identical
  copy (the same photo filed under two products) would find itself and inflate every figure.
- Held-out (`evaluate_queries`): labelled photos that are not in the build (a plant's own test
  set) are searched against all of its vectors; a gallery vector whose content hash equals the
  query's is left out in the same way.

Figures, per label (defect type and product for the defect index, product for the normal index):

- top-1 accuracy: the nearest neighbour has the query's label.
- top-5 vote accuracy: the most frequent label among the 5 nearest neighbours is the query's
  (a tie goes to the tied label whose first neighbour ranks highest).
- mAP@10: mean over queries of AP@10 = sum_{i<=10} P@i * rel_i / min(R, 10), with rel_i = the i-th
  neighbour has the query's label and R = the number of gallery vectors with that label (those left
  out excluded). Queries with R = 0 have no defined AP and are not counted in it.
- per-class recall: top-1 accuracy over the queries of one class.
- confusion matrix: rows = true label, columns = the top-1 neighbour's label.

Chance levels (what a search that ignores the picture would score on the same gallery):

- top-1 accuracy and per-class recall: the expected accuracy of a uniformly random neighbour,
  R / M per query (M = gallery vectors the query may find), averaged; about the sum of the
  squared class shares.
- top-5 vote: the accuracy of a majority vote over 5 neighbours drawn at random without
  replacement (seeded Monte-Carlo, at least `VOTE_CHANCE_DRAWS` draws in all).
- mAP@10: the exact expected AP@10 of a random ranking of the M vectors, averaged.
- majority class rate (one per label): the share of the most frequent label among the queries,
  what always answering that label would score.

Every function returns plain JSON-serialisable values; floats are rounded to `DIGITS` places.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from indexing import vector_index

QUALITY_VERSION = 1
MAP_K = 10
VOTE_K = 5
MAX_QUERIES = 5000
SEARCH_BATCH = 1024
VOTE_CHANCE_DRAWS = 2000
DIGITS = 4
DEFECT_LABEL = "defect_type"
PRODUCT_LABEL = "product"
HEADLINE_METRICS = ("top1_accuracy", "top5_vote_accuracy", "map_at_10")


@dataclass(frozen=True)
class Neighbours:
    """The ranked gallery neighbours of each evaluated query, best first, with the query's own
    picture (content hash) left out. Rows past the last neighbour are -1 (ids) and NaN (scores)."""

    query_rows: np.ndarray  # (q,) positions of the evaluated queries in the query set
    rows: np.ndarray  # (q, k) gallery positions
    ids: np.ndarray  # (q, k) gallery ids (image ids)
    scores: np.ndarray  # (q, k) cosine similarity
    available: np.ndarray  # (q,) gallery vectors each query may find (M)
    gallery_groups: np.ndarray  # (n,) content-hash group of each gallery vector
    query_groups: np.ndarray  # (q,) content-hash group of each evaluated query
    sampled: bool
    seed: int | None


def _group_ids(*hash_lists: Sequence[str | None]) -> list[np.ndarray]:
    """One integer per content hash, shared across the lists; a missing hash gets its own
    negative id, equal to nothing else."""
    table: dict[str, int] = {}
    fresh = -1
    result = []
    for hashes in hash_lists:
        groups = np.empty(len(hashes), dtype=np.int64)
        for position, value in enumerate(hashes):
            if value:
                groups[position] = table.setdefault(value, len(table))
            else:
                groups[position] = fresh
                fresh -= 1
        result.append(groups)
    return result


def _occurrences(keys: np.ndarray, of: np.ndarray) -> np.ndarray:
    """How many times each value of `of` occurs in `keys`."""
    if not len(keys):
        return np.zeros(len(of), dtype=np.int64)
    unique, counts = np.unique(keys, return_counts=True)
    found = np.clip(np.searchsorted(unique, of), 0, len(unique) - 1)
    return np.where(unique[found] == of, counts[found], 0)


def _normalised(vectors: np.ndarray) -> np.ndarray:
    vectors = np.array(vectors, dtype=np.float32, copy=True, order="C")
    faiss.normalize_L2(vectors)
    return vectors


def _search_excluding(
    gallery: np.ndarray,
    gallery_groups: np.ndarray,
    queries: np.ndarray,
    query_groups: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, scores) of the k best gallery vectors per query outside the query's group, in one
    FAISS index searched in batches. Each batch asks for k + the largest group size among its
    queries, so k vectors outside the group are always among the answers when they exist."""
    n = len(gallery)
    index = vector_index.build_index(gallery, np.arange(n, dtype=np.int64))
    sizes = _occurrences(gallery_groups, query_groups)
    rows_out = np.full((len(queries), k), -1, dtype=np.int64)
    scores_out = np.full((len(queries), k), np.nan, dtype=np.float32)
    queries = _normalised(queries)
    for start in range(0, len(queries), SEARCH_BATCH):
        stop = min(start + SEARCH_BATCH, len(queries))
        ask = min(k + int(sizes[start:stop].max(initial=0)), n)
        if ask <= 0:
            continue
        scores, rows = index.search(queries[start:stop], ask)
        valid = (rows >= 0) & (gallery_groups[np.clip(rows, 0, None)] != query_groups[start:stop, None])
        order = np.argsort(~valid, axis=1, kind="stable")[:, :k]
        kept = np.take_along_axis(valid, order, axis=1)
        width = order.shape[1]
        rows_out[start:stop, :width] = np.where(kept, np.take_along_axis(rows, order, axis=1), -1)
        scores_out[start:stop, :width] = np.where(kept, np.take_along_axis(scores, order, axis=1), np.nan)
    return rows_out, scores_out


def loo_neighbours(
    vectors: np.ndarray,
    hashes: Sequence[str | None],
    *,
    ids: np.ndarray | None = None,
    k: int = MAP_K,
    max_queries: int = MAX_QUERIES,
    seed: int = 0,
) -> Neighbours:
    """Leave-one-out neighbours of a build's own vectors: each query (all of them, or a seeded
    sample of `max_queries`) against all the others, its own picture (content hash) left out."""
    n = len(vectors)
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    (groups,) = _group_ids(hashes)
    sampled = n > max_queries
    query_rows = (
        np.sort(np.random.default_rng(seed).choice(n, size=max_queries, replace=False))
        if sampled
        else np.arange(n, dtype=np.int64)
    )
    rows, scores = _search_excluding(vectors, groups, vectors[query_rows], groups[query_rows], k)
    available = n - _occurrences(groups, groups[query_rows])
    return Neighbours(
        query_rows=query_rows,
        rows=rows,
        ids=np.where(rows >= 0, ids[np.clip(rows, 0, None)], -1) if n else rows,
        scores=scores,
        available=available,
        gallery_groups=groups,
        query_groups=groups[query_rows],
        sampled=sampled,
        seed=seed if sampled else None,
    )


def query_neighbours(
    gallery: np.ndarray,
    gallery_hashes: Sequence[str | None],
    queries: np.ndarray,
    query_hashes: Sequence[str | None],
    *,
    ids: np.ndarray | None = None,
    k: int = MAP_K,
) -> Neighbours:
    """Neighbours of held-out queries in a gallery, gallery copies of each query's picture left out."""
    n = len(gallery)
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    gallery_groups, query_groups = _group_ids(gallery_hashes, query_hashes)
    rows, scores = _search_excluding(gallery, gallery_groups, queries, query_groups, k)
    return Neighbours(
        query_rows=np.arange(len(queries), dtype=np.int64),
        rows=rows,
        ids=np.where(rows >= 0, ids[np.clip(rows, 0, None)], -1) if n else rows,
        scores=scores,
        available=n - _occurrences(gallery_groups, query_groups),
        gallery_groups=gallery_groups,
        query_groups=query_groups,
        sampled=False,
        seed=None,
    )


def _round(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), DIGITS)


def _mean(values: np.ndarray) -> float | None:
    return _round(float(values.mean())) if len(values) else None


def _random_ap(relevant: np.ndarray, available: np.ndarray, k: int) -> np.ndarray:
    """Exact expected AP@k of a random ranking of M vectors of which R are relevant:
    E[P@i * rel_i] = (R/M + (i-1) R(R-1) / (M(M-1))) / i."""
    relevant = relevant.astype(np.float64)
    available = available.astype(np.float64)
    total = np.zeros(len(relevant))
    pair = np.where(available > 1, relevant * (relevant - 1) / np.maximum(available * (available - 1), 1), 0.0)
    for i in range(1, k + 1):
        total += np.where(i <= available, (relevant / available + (i - 1) * pair) / i, 0.0)
    return total / np.minimum(relevant, k)


def _vote(labels: np.ndarray) -> np.ndarray:
    """Majority label per row of neighbour labels (-1 = none); a tie goes to the tied label
    that appears first (the nearest)."""
    known = labels >= 0
    counts = ((labels[:, :, None] == labels[:, None, :]) & known[:, None, :]).sum(axis=2)
    width = labels.shape[1]
    rank = np.where(known, counts * (width + 1) - np.arange(width), -1)
    return np.take_along_axis(labels, rank.argmax(axis=1)[:, None], axis=1)[:, 0]


def _random_vote_chance(
    query_codes: np.ndarray,
    query_groups: np.ndarray,
    gallery_codes: np.ndarray,
    gallery_groups: np.ndarray,
    seed: int,
) -> np.ndarray:
    """Per query, the Monte-Carlo accuracy of a majority vote over VOTE_K gallery vectors drawn at
    random without replacement (its own group left out); ties go to the label drawn first."""
    n = len(gallery_codes)
    rng = np.random.default_rng(seed)
    draws = max(1, -(-VOTE_CHANCE_DRAWS // max(len(query_codes), 1)))
    hits = np.zeros(len(query_codes))
    sizes = _occurrences(gallery_groups, query_groups)
    for q, (label, group, size) in enumerate(zip(query_codes, query_groups, sizes, strict=True)):
        for _ in range(draws):
            picked = rng.choice(n, size=min(n, VOTE_K + int(size)), replace=False)
            picked = picked[gallery_groups[picked] != group][:VOTE_K]
            drawn = [int(c) for c in gallery_codes[picked] if c >= 0]
            if drawn:
                counts = Counter(drawn)
                top = max(counts.values())
                winner = next(c for c in drawn if counts[c] == top)
                hits[q] += winner == label
    return hits / draws


def label_metrics(
    neighbours: Neighbours,
    *,
    gallery_labels: Sequence[str | None],
    query_labels: Sequence[str | None],
    seed: int = 0,
) -> dict[str, Any]:
    """The figures for one labelling (e.g. defect type) of neighbours already found.
    `query_labels` are the labels of the whole query set (neighbours.query_rows index into it);
    a query without a label is not counted, nor one with no other picture to find."""
    classes = sorted({label for label in [*gallery_labels, *query_labels] if label is not None})
    code_of = {label: code for code, label in enumerate(classes)}
    gallery_codes = np.array([code_of[x] if x is not None else -1 for x in gallery_labels], dtype=np.int64)
    query_codes = np.array([code_of[x] if x is not None else -1 for x in query_labels], dtype=np.int64)
    codes = query_codes[neighbours.query_rows]
    keep = (codes >= 0) & (neighbours.available > 0)
    codes = codes[keep]
    groups = neighbours.query_groups[keep]
    rows = neighbours.rows[keep]
    available = neighbours.available[keep]
    gallery_groups = neighbours.gallery_groups

    # R: gallery vectors of the query's label that its search may find (its own picture left out).
    width = len(classes) + 1
    left_out = _occurrences(gallery_groups * width + gallery_codes + 1, groups * width + codes + 1)
    relevant = np.bincount(gallery_codes[gallery_codes >= 0], minlength=len(classes))[codes] - left_out

    neighbour_codes = np.where(rows >= 0, gallery_codes[np.clip(rows, 0, None)], -1)
    predicted = neighbour_codes[:, 0]
    correct = predicted == codes
    voted = _vote(neighbour_codes[:, :VOTE_K])
    random_neighbour = relevant / np.maximum(available, 1)

    hits = (neighbour_codes[:, :MAP_K] == codes[:, None]) & (rows[:, :MAP_K] >= 0)
    precision = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    with_relevant = relevant > 0
    ap = (precision * hits).sum(axis=1)[with_relevant] / np.minimum(relevant[with_relevant], MAP_K)
    random_ap = _random_ap(relevant[with_relevant], available[with_relevant], MAP_K)

    vote_chance = _random_vote_chance(codes, groups, gallery_codes, gallery_groups, seed)
    query_counts = np.bincount(codes, minlength=len(classes))
    majority = int(query_counts.argmax()) if len(codes) else None
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    known = predicted >= 0
    np.add.at(confusion, (codes[known], predicted[known]), 1)
    return {
        "queries": int(len(codes)),
        "classes": len(classes),
        "majority_class": {
            "label": classes[majority] if majority is not None else None,
            "rate": _round(query_counts[majority] / len(codes)) if majority is not None else None,
        },
        "top1_accuracy": {"value": _mean(correct), "chance": _mean(random_neighbour)},
        "top5_vote_accuracy": {"value": _mean(voted == codes), "chance": _mean(vote_chance)},
        "map_at_10": {"value": _mean(ap), "chance": _mean(random_ap), "queries": int(with_relevant.sum())},
        "per_class": [
            {
                "label": label,
                "queries": int(query_counts[code]),
                "recall": _mean(correct[codes == code]),
                "chance": _mean(random_neighbour[codes == code]),
            }
            for code, label in enumerate(classes)
            if query_counts[code]
        ],
        "confusion": {"labels": classes, "matrix": confusion.tolist()},
    }


def record_labels(records: Sequence[Mapping[str, Any]]) -> tuple[list[str | None], list[str | None], list[str]]:
    """(products, defect types, content hashes) of index records: V2 records carry
    product_code/defect_code from the catalog, V1 records product/defect from file names."""
    products = [record.get("product_code") or record.get("product") or None for record in records]
    defects = [record.get("defect_code") or record.get("defect") or None for record in records]
    hashes = [record.get("sha256") or "" for record in records]
    return products, defects, hashes


def labels_for(image_type: str) -> tuple[str, ...]:
    """The labels a build of `image_type` is measured on, its main label first."""
    return (DEFECT_LABEL, PRODUCT_LABEL) if image_type == "defect" else (PRODUCT_LABEL,)


def _report(
    *,
    mode: str,
    image_type: str,
    neighbours: Neighbours,
    gallery_count: int,
    gallery: dict[str, list[str | None]],
    queries: dict[str, list[str | None]],
    gallery_hashes: Sequence[str | None],
    started: float,
    seed: int,
) -> dict[str, Any]:
    labels = labels_for(image_type)
    return {
        "version": QUALITY_VERSION,
        "mode": mode,
        "image_type": image_type,
        "main_label": labels[0],
        "vector_count": gallery_count,
        "query_count": int(len(neighbours.query_rows)),
        "sampled": neighbours.sampled,
        "sample_seed": neighbours.seed,
        "duplicate_vectors": len([h for h in gallery_hashes if h]) - len({h for h in gallery_hashes if h}),
        "k": MAP_K,
        "vote_k": VOTE_K,
        "labels": {
            label: label_metrics(
                neighbours,
                gallery_labels=gallery[label],
                query_labels=queries[label],
                seed=seed,
            )
            for label in labels
        },
        "seconds": round(time.perf_counter() - started, 3),
    }


def evaluate_build(
    *,
    image_type: str,
    vectors: np.ndarray,
    records: Sequence[Mapping[str, Any]],
    max_queries: int = MAX_QUERIES,
    seed: int = 0,
) -> dict[str, Any]:
    """Leave-one-out quality of a build's own vectors (records = its metadata, same order)."""
    started = time.perf_counter()
    products, defects, hashes = record_labels(records)
    neighbours = loo_neighbours(vectors, hashes, k=MAP_K, max_queries=max_queries, seed=seed)
    labels = {DEFECT_LABEL: defects, PRODUCT_LABEL: products}
    return _report(
        mode="leave_one_out",
        image_type=image_type,
        neighbours=neighbours,
        gallery_count=len(vectors),
        gallery=labels,
        queries=labels,
        gallery_hashes=hashes,
        started=started,
        seed=seed,
    )


def evaluate_queries(
    *,
    image_type: str,
    vectors: np.ndarray,
    records: Sequence[Mapping[str, Any]],
    query_vectors: np.ndarray,
    query_products: Sequence[str | None],
    query_defects: Sequence[str | None],
    query_hashes: Sequence[str | None],
    seed: int = 0,
) -> dict[str, Any]:
    """Quality on held-out labelled queries searched against a build's vectors."""
    started = time.perf_counter()
    products, defects, hashes = record_labels(records)
    neighbours = query_neighbours(vectors, hashes, query_vectors, query_hashes, k=MAP_K)
    return _report(
        mode="held_out",
        image_type=image_type,
        neighbours=neighbours,
        gallery_count=len(vectors),
        gallery={DEFECT_LABEL: defects, PRODUCT_LABEL: products},
        queries={DEFECT_LABEL: list(query_defects), PRODUCT_LABEL: list(query_products)},
        gallery_hashes=hashes,
        started=started,
        seed=seed,
    )


def index_vectors(index: faiss.Index) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) stored in a build's IndexIDMap2(IndexFlatIP), in insertion order."""
    inner = faiss.downcast_index(index.index)
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    vectors = inner.reconstruct_n(0, index.ntotal) if index.ntotal else np.zeros((0, index.d), dtype=np.float32)
    return ids, np.asarray(vectors, dtype=np.float32)


# --- reading stored figures ---------------------------------------------------------------


def main_top1(quality: Mapping[str, Any] | None) -> float | None:
    """The build's headline figure: top-1 accuracy on its main label (defect type for the
    defect index, product for the normal index); None when not measured."""
    if not quality:
        return None
    try:
        return quality["labels"][quality["main_label"]]["top1_accuracy"]["value"]
    except (KeyError, TypeError):
        return None


def quality_deltas(quality: Mapping[str, Any] | None, other: Mapping[str, Any] | None) -> dict[str, Any]:
    """label -> {"<metric>": value - other's value, "per_class": {class: recall difference}} for
    every figure both measured (e.g. a build against the active build)."""
    if not quality or not other:
        return {}
    result: dict[str, Any] = {}
    for label, block in quality.get("labels", {}).items():
        theirs = other.get("labels", {}).get(label)
        if not theirs:
            continue
        deltas: dict[str, Any] = {}
        for metric in HEADLINE_METRICS:
            mine_value = block.get(metric, {}).get("value")
            their_value = theirs.get(metric, {}).get("value")
            if mine_value is not None and their_value is not None:
                deltas[metric] = _round(mine_value - their_value)
        their_recall = {row["label"]: row["recall"] for row in theirs.get("per_class", [])}
        deltas["per_class"] = {
            row["label"]: _round(row["recall"] - their_recall[row["label"]])
            for row in block.get("per_class", [])
            if row.get("recall") is not None and their_recall.get(row["label"]) is not None
        }
        result[label] = deltas
    return result
