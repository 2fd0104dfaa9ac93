"""FAISS index build / search / (de)serialisation. Django-free.

Vectors are L2-normalised, so inner product is cosine similarity. Ids are catalog image ids
(V2) or positions in the legacy folder listing (V1)."""

from __future__ import annotations

import faiss
import numpy as np


def build_index(vectors: np.ndarray, ids: np.ndarray) -> faiss.Index:
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise ValueError(f"vectors {vectors.shape} and ids {ids.shape} do not match")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    faiss.normalize_L2(vectors)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    if len(vectors):
        index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
    return index


def search(
    index: faiss.Index, query: np.ndarray, k: int, *, allowed_ids: np.ndarray | None = None
) -> list[tuple[int, float]]:
    """Top-k (id, cosine) for one query vector, best first. With `allowed_ids`, only those ids
    are considered, inside FAISS, so k results come back whenever k allowed ids exist."""
    query = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
    faiss.normalize_L2(query)
    k = min(k, index.ntotal)
    if k <= 0:
        return []
    params = None
    if allowed_ids is not None:
        if len(allowed_ids) == 0:
            return []
        params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(np.ascontiguousarray(allowed_ids, dtype=np.int64)))
    scores, ids = index.search(query, k, params=params)
    return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i != -1]


def serialize(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def deserialize(data: bytes) -> faiss.Index:
    """Only for bytes this system wrote (callers check the manifest hash first): a crafted
    index file can do harm."""
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
