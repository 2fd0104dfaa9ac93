"""The files of one index build, packed to bytes and verified when unpacked. Django-free.

faiss_index.bin   IndexIDMap2(IndexFlatIP), ids = image ids
embeddings.pt     {"ids": int64 tensor, "vectors": float32 tensor}
metadata.json     one search-result record per vector (UTF-8, Korean kept readable)
manifest.json     build id, model, fingerprint, counts, timings, calibration, sha256 of every file above
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import torch

from indexing import vector_index
from indexing.adaptation import PROJECTION_FILE, Projection
from indexing.calibration import MODE_WHOLE, Calibration

INDEX_FILE = "faiss_index.bin"
EMBEDDINGS_FILE = "embeddings.pt"
METADATA_FILE = "metadata.json"
MANIFEST_FILE = "manifest.json"
DATA_FILES = (INDEX_FILE, EMBEDDINGS_FILE, METADATA_FILE)
ALL_FILES = (*DATA_FILES, MANIFEST_FILE)
# Files a build has only sometimes and that serving needs when it does (listed in its manifest).
SERVING_EXTRAS = (PROJECTION_FILE,)
MAX_CACHED_FILTERS = 1024


class ArtifactError(ValueError):
    """Artifacts are missing, altered or from another system: they are not loaded."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pack_artifacts(
    *,
    ids: np.ndarray,
    vectors: np.ndarray,
    metadata: list[dict[str, Any]],
    manifest: dict[str, Any],
    extra_files: Mapping[str, bytes] | None = None,
) -> dict[str, bytes]:
    """All four files as bytes, plus `extra_files` (a normal build's anomaly models, loaded on
    demand); the manifest records the size and sha256 of every other file."""
    index = vector_index.build_index(vectors, ids)
    embeddings = io.BytesIO()
    torch.save(
        {"ids": torch.from_numpy(np.asarray(ids, dtype=np.int64)), "vectors": torch.from_numpy(vectors)}, embeddings
    )
    files = {
        INDEX_FILE: vector_index.serialize(index),
        EMBEDDINGS_FILE: embeddings.getvalue(),
        METADATA_FILE: json.dumps(metadata, ensure_ascii=False, indent=1).encode("utf-8"),
        **(extra_files or {}),
    }
    manifest = {
        **manifest,
        "format": 1,
        "files": {name: {"sha256": sha256_hex(data), "bytes": len(data)} for name, data in files.items()},
    }
    files[MANIFEST_FILE] = json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True).encode("utf-8")
    return files


@dataclass
class LoadedIndex:
    """A build ready to answer searches. Immutable once made: a new build is a new object."""

    manifest: dict[str, Any]
    index: faiss.Index
    records: dict[int, dict[str, Any]]
    manifest_sha256: str
    _filter_cache: dict[tuple[str | None, str | None], np.ndarray] = field(default_factory=dict, repr=False)
    # Vectors whose picture (sha256, V2 records) an earlier vector already has: identical bytes
    # for two products. A search asks FAISS for this many extra hits so that, keeping one hit per
    # picture, top_k distinct pictures still come back. Counted once, when the build is loaded.
    duplicate_vectors: int = field(init=False, default=0)
    _ids_by_hash: dict[str, list[int]] | None = field(default=None, repr=False)
    # Per-type thresholds and match confidences learnt when the build was made, per score space
    # (indexing/calibration.py MODE_*); none for builds made before calibration existed.
    calibrations: dict[str, Calibration] = field(init=False, default_factory=dict)
    # The build's catalog adaptation (indexing/adaptation.py): applied to every query vector.
    projection: Projection | None = None

    def __post_init__(self) -> None:
        hashes = [record["sha256"] for record in self.records.values() if record.get("sha256")]
        self.duplicate_vectors = len(hashes) - len(set(hashes))
        entry = self.manifest.get("calibration")
        for mode, data in entry.items() if isinstance(entry, dict) else ():
            calibration = Calibration.from_dict(data)
            if calibration is not None:
                self.calibrations[mode] = calibration

    def query_vector(self, vector: np.ndarray) -> np.ndarray:
        """A query embedding in this build's space: adapted when the build kept an adaptation."""
        return vector if self.projection is None else self.projection.apply(vector)

    def calibration_for(self, mode: str = MODE_WHOLE) -> Calibration | None:
        """The calibration of a score space; None: the build has none (made before calibration,
        or with fewer than two types or products to tell apart)."""
        return self.calibrations.get(mode)

    @property
    def build_id(self) -> int:
        return int(self.manifest["build_id"])

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["model_fingerprint"])

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def ids_with_hash(self, sha256: str) -> list[int]:
        """Ids of the vectors of this picture (content hash); the map is made on first use."""
        if self._ids_by_hash is None:
            by_hash: dict[str, list[int]] = {}
            for image_id, record in self.records.items():
                if record.get("sha256"):
                    by_hash.setdefault(record["sha256"], []).append(image_id)
            self._ids_by_hash = by_hash
        return self._ids_by_hash.get(sha256, [])

    def ids_matching(self, *, product_code: str | None, defect_code: str | None) -> np.ndarray | None:
        """Ids whose record has these codes (None = no filter at all)."""
        if product_code is None and defect_code is None:
            return None
        key = (product_code, defect_code)
        ids = self._filter_cache.get(key)
        if ids is None:
            ids = np.array(
                [
                    image_id
                    for image_id, record in self.records.items()
                    if (product_code is None or record.get("product_code", record.get("product")) == product_code)
                    and (defect_code is None or record.get("defect_code", record.get("defect")) == defect_code)
                ],
                dtype=np.int64,
            )
            if len(self._filter_cache) < MAX_CACHED_FILTERS:  # codes come from clients: stay bounded
                self._filter_cache[key] = ids
        return ids


def unpack_artifacts(files: Mapping[str, bytes], *, manifest_sha256: str | None = None) -> LoadedIndex:
    """Verify and load. `manifest_sha256` (from the database) pins the manifest; the manifest
    pins every other file, so nothing that this system did not write is deserialised."""
    missing = [name for name in (MANIFEST_FILE, INDEX_FILE, METADATA_FILE) if name not in files]
    if missing:
        raise ArtifactError(f"index files missing: {', '.join(missing)}")
    manifest_bytes = files[MANIFEST_FILE]
    actual = sha256_hex(manifest_bytes)
    if manifest_sha256 and actual != manifest_sha256:
        raise ArtifactError("manifest.json does not match the build record (altered or from another build)")
    manifest = json.loads(manifest_bytes)
    for name in (INDEX_FILE, METADATA_FILE):
        expected = manifest.get("files", {}).get(name, {}).get("sha256")
        if expected != sha256_hex(files[name]):
            raise ArtifactError(f"{name} does not match its manifest entry")
    projection = None
    if PROJECTION_FILE in manifest.get("files", {}):
        data = files.get(PROJECTION_FILE)
        if data is None or sha256_hex(data) != manifest["files"][PROJECTION_FILE]["sha256"]:
            raise ArtifactError(f"{PROJECTION_FILE} is missing or does not match its manifest entry")
        projection = Projection.from_bytes(data)
    index = vector_index.deserialize(files[INDEX_FILE])
    if projection is not None and projection.output_dim != index.d:
        raise ArtifactError(f"{PROJECTION_FILE} makes {projection.output_dim}-d vectors; the index holds {index.d}-d")
    records = {int(record["image_id"]): record for record in json.loads(files[METADATA_FILE])}
    if index.ntotal != len(records):
        raise ArtifactError(f"index has {index.ntotal} vectors but metadata has {len(records)} records")
    return LoadedIndex(manifest=manifest, index=index, records=records, manifest_sha256=actual, projection=projection)
