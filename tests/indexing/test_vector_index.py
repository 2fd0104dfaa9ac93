from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexing import vector_index
from indexing.artifacts import (
    INDEX_FILE,
    MANIFEST_FILE,
    METADATA_FILE,
    ArtifactError,
    pack_artifacts,
    sha256_hex,
    unpack_artifacts,
)


def unit_vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_search_returns_ids_best_first_with_cosine_scores() -> None:
    vectors = unit_vectors(50)
    index = vector_index.build_index(vectors, np.arange(100, 150))
    hits = vector_index.search(index, vectors[7], 5)
    assert hits[0][0] == 107 and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    scores = [score for _, score in hits]
    assert scores == sorted(scores, reverse=True) and len(hits) == 5


def test_filtered_search_still_returns_k_hits_when_enough_match() -> None:
    vectors = unit_vectors(200)
    index = vector_index.build_index(vectors, np.arange(200))
    allowed = np.arange(0, 200, 10)  # 20 ids, most of them far from the query
    hits = vector_index.search(index, vectors[3], 8, allowed_ids=allowed)
    assert len(hits) == 8 and {i for i, _ in hits} <= set(allowed.tolist())
    assert vector_index.search(index, vectors[3], 8, allowed_ids=np.array([], dtype=np.int64)) == []
    assert len(vector_index.search(index, vectors[3], 500)) == 200


def test_artifacts_round_trip_and_keep_korean_readable(tmp_path: Path) -> None:
    vectors = unit_vectors(3)
    records = [{"image_id": i, "defect_name": "긁힘", "product_code": "p", "defect_code": "d"} for i in (4, 5, 6)]
    files = pack_artifacts(
        ids=np.array([4, 5, 6]),
        vectors=vectors,
        metadata=records,
        manifest={"build_id": 9, "model_fingerprint": "fp"},
        into=tmp_path / "build",
    )
    assert sorted(path.name for path in (tmp_path / "build").iterdir()) == sorted(files)  # written there
    assert "긁힘".encode() in files[METADATA_FILE]
    manifest = json.loads(files[MANIFEST_FILE])
    assert manifest["files"][INDEX_FILE]["sha256"] == sha256_hex(files[INDEX_FILE])
    loaded = unpack_artifacts(files, manifest_sha256=sha256_hex(files[MANIFEST_FILE]))
    assert loaded.build_id == 9 and loaded.size == 3 and loaded.records[5]["defect_name"] == "긁힘"
    assert vector_index.search(loaded.index, vectors[1], 1)[0][0] == 5
    assert loaded.ids_matching(product_code="p", defect_code=None).tolist() == [4, 5, 6]
    assert loaded.ids_matching(product_code="x", defect_code=None).tolist() == []


@pytest.mark.parametrize("tampered", [INDEX_FILE, METADATA_FILE, MANIFEST_FILE])
def test_altered_files_are_refused(tampered: str, tmp_path: Path) -> None:
    files = dict(  # in memory, as read from storage
        pack_artifacts(
            ids=np.array([1]),
            vectors=unit_vectors(1),
            metadata=[{"image_id": 1}],
            manifest={"build_id": 1, "model_fingerprint": "fp"},
            into=tmp_path / "build",
        )
    )
    pinned = sha256_hex(files[MANIFEST_FILE])
    files[tampered] = files[tampered][:-1] + bytes([files[tampered][-1] ^ 1])
    with pytest.raises(ArtifactError):
        unpack_artifacts(files, manifest_sha256=pinned)
