"""The files of one index build, written to a folder and verified when unpacked. Django-free.

faiss_index.bin   IndexIDMap(IndexFlatIP) up to SIMSEARCH_EXACT_INDEX_MAX vectors, IndexIDMap(IndexIVFFlat)
                  above (indexing/vector_index.py); ids = image ids. Builds made before: IndexIDMap2(IndexFlatIP)
embeddings.pt     {"ids": int64 tensor, "vectors": float32 tensor}
metadata.json     one search-result record per vector (UTF-8, Korean kept readable; audits, older builds)
records.bin       the same records as columns (indexing/record_table.py): what serving reads
manifest.json     build id, model, fingerprint, counts, timings, calibration, index kind and its measured
                  recall@10, sha256 of every file above

From the local cache the index and the records are memory-mapped, not read into the process.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from indexing import vector_index
from indexing.adaptation import PROJECTION_FILE, Projection
from indexing.calibration import MODE_WHOLE, Calibration
from indexing.record_table import RecordTable, pack_records

INDEX_FILE = "faiss_index.bin"
EMBEDDINGS_FILE = "embeddings.pt"
METADATA_FILE = "metadata.json"
RECORDS_FILE = "records.bin"
MANIFEST_FILE = "manifest.json"
DATA_FILES = (INDEX_FILE, EMBEDDINGS_FILE, METADATA_FILE)
ALL_FILES = (*DATA_FILES, MANIFEST_FILE)
# Files a build has only sometimes and that serving needs when it does (listed in its manifest).
SERVING_EXTRAS = (PROJECTION_FILE, RECORDS_FILE)
# Up to this many vectors a build's index is exact (flat); above, approximate (IVF). The setting
# SIMSEARCH_EXACT_INDEX_MAX overrides it for builds (README, Sizing).
DEFAULT_EXACT_MAX = 100_000
MAX_CACHED_FILTERS = 1024
# The ids of the filters searched so far, per loaded build, up to this many bytes in all (one
# defect type of a million images is 1 MiB); beyond it a filter's ids are made again per search
# (a column comparison: a few milliseconds per million records).
FILTER_CACHE_BYTES = 64 * 1024 * 1024


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
    into: Path,
    extra_files: Mapping[str, bytes] | None = None,
    exact_max: int = DEFAULT_EXACT_MAX,
    recall_target: float = 0.95,
) -> CachedFiles:
    """All the files written into the new folder `into`, plus `extra_files` (a normal build's
    anomaly models, loaded on demand); the manifest records the size and sha256 of every other
    file, and the index kind with its recall@10 against exact search, measured here. Each file
    goes straight to disk: at a million vectors the index and the embeddings are 2 GB each,
    which bytes in memory would hold twice over (and the caller's vectors besides)."""
    into.mkdir(parents=True)
    served = vector_index.build_serving_index(vectors, ids, exact_max=exact_max, recall_target=recall_target)
    faiss.write_index(served.index, str(into / INDEX_FILE))
    index_info = served.info
    del served  # the index's own copy of the vectors
    torch.save(
        {"ids": torch.from_numpy(np.asarray(ids, dtype=np.int64)), "vectors": torch.from_numpy(vectors)},
        into / EMBEDDINGS_FILE,
    )
    with (into / METADATA_FILE).open("w", encoding="utf-8") as handle:
        json.dump(metadata, handle, ensure_ascii=False, indent=1)
    (into / RECORDS_FILE).write_bytes(pack_records(metadata))
    for name, data in (extra_files or {}).items():
        (into / name).write_bytes(data)
    names = [INDEX_FILE, EMBEDDINGS_FILE, METADATA_FILE, RECORDS_FILE, *(extra_files or {})]
    manifest = {
        **manifest,
        "index": index_info,
        "format": 1,
        "files": {name: {"sha256": _file_sha256(into / name), "bytes": (into / name).stat().st_size} for name in names},
    }
    (into / MANIFEST_FILE).write_bytes(
        json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True).encode("utf-8")
    )
    return CachedFiles(into, frozenset([*names, MANIFEST_FILE]))


@dataclass
class LoadedIndex:
    """A build ready to answer searches. Immutable once made: a new build is a new object."""

    manifest: dict[str, Any]
    index: faiss.Index
    # A RecordTable (a Mapping) when unpacked: the dict of a record is made when it is read.
    records: Mapping[int, dict[str, Any]]
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
        if isinstance(self.records, RecordTable):
            self.duplicate_vectors = self.records.repeats("sha256")
        else:
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

    def all_ids(self) -> np.ndarray:
        """Every id of the build (the compact record table's own array: no Python loop at 1M)."""
        if isinstance(self.records, RecordTable):
            return self.records.keys_in_order
        return np.fromiter(self.records, dtype=np.int64)

    def ids_with_hash(self, sha256: str) -> list[int]:
        """Ids of the vectors of this picture (content hash); the map is made on first use."""
        if isinstance(self.records, RecordTable):
            return self.records.keys_in_order[self.records.rows_equal("sha256", sha256)].tolist() if sha256 else []
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
        if ids is None and isinstance(self.records, RecordTable):
            ids = self.records.keys_in_order[
                self._code_rows("product_code", "product", product_code)
                & self._code_rows("defect_code", "defect", defect_code)
            ]
            cached = sum(a.nbytes for a in self._filter_cache.values())
            if len(self._filter_cache) < MAX_CACHED_FILTERS and cached + ids.nbytes <= FILTER_CACHE_BYTES:
                self._filter_cache[key] = ids
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

    def _code_rows(self, name: str, legacy_name: str, value: str | None) -> np.ndarray | bool:
        """Rows whose `name` (or, for records without it, V1's `legacy_name`) is `value`."""
        if value is None:
            return True
        table = self.records
        assert isinstance(table, RecordTable)
        return table.rows_equal(name, value) | (~table.rows_present(name) & table.rows_equal(legacy_name, value))


def unpack_artifacts(files: Mapping[str, bytes], *, manifest_sha256: str | None = None) -> LoadedIndex:
    """Verify and load. `manifest_sha256` (from the database) pins the manifest; the manifest
    pins every other file, so nothing that this system did not write is deserialised. Files in
    the local cache (`files` is a CachedFiles) are hashed from disk and memory-mapped."""
    if MANIFEST_FILE not in files:
        raise ArtifactError(f"index files missing: {MANIFEST_FILE}")
    manifest_bytes = files[MANIFEST_FILE]
    actual = sha256_hex(manifest_bytes)
    if manifest_sha256 and actual != manifest_sha256:
        raise ArtifactError("manifest.json does not match the build record (altered or from another build)")
    manifest = json.loads(manifest_bytes)
    listed = manifest.get("files", {})
    records_file = RECORDS_FILE if RECORDS_FILE in listed else METADATA_FILE
    missing = [name for name in (INDEX_FILE, records_file) if name not in files]
    if missing:
        raise ArtifactError(f"index files missing: {', '.join(missing)}")
    for name in dict.fromkeys([INDEX_FILE, records_file, *(n for n in (METADATA_FILE, RECORDS_FILE) if n in files)]):
        if listed.get(name, {}).get("sha256") != _sha256_of(files, name):
            raise ArtifactError(f"{name} does not match its manifest entry")
    projection = None
    if PROJECTION_FILE in manifest.get("files", {}):
        data = files.get(PROJECTION_FILE)
        if data is None or sha256_hex(data) != manifest["files"][PROJECTION_FILE]["sha256"]:
            raise ArtifactError(f"{PROJECTION_FILE} is missing or does not match its manifest entry")
        projection = Projection.from_bytes(data)
    index_path = local_path(files, INDEX_FILE)
    index = vector_index.read_mapped(index_path) if index_path else vector_index.deserialize(files[INDEX_FILE])
    if projection is not None and projection.output_dim != index.d:
        raise ArtifactError(f"{PROJECTION_FILE} makes {projection.output_dim}-d vectors; the index holds {index.d}-d")
    records = _records(files, records_file)
    if index.ntotal != len(records):
        raise ArtifactError(f"index has {index.ntotal} vectors but metadata has {len(records)} records")
    return LoadedIndex(manifest=manifest, index=index, records=records, manifest_sha256=actual, projection=projection)


class CachedFiles(Mapping[str, bytes]):
    """A build's files in a local folder: read when asked for, or memory-mapped by path."""

    def __init__(self, folder: Path, names: frozenset[str]) -> None:
        self.folder = folder
        self._names = sorted(path.name for path in folder.iterdir() if path.name in names)

    def __getitem__(self, name: str) -> bytes:
        if name not in self._names:
            raise KeyError(name)
        return (self.folder / name).read_bytes()

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def local_path(self, name: str) -> Path | None:
        return self.folder / name if name in self._names else None


def local_path(files: Mapping[str, bytes], name: str) -> Path | None:
    """The file's path when `files` are in a local folder (CachedFiles), else None."""
    return files.local_path(name) if isinstance(files, CachedFiles) else None


def _sha256_of(files: Mapping[str, bytes], name: str) -> str:
    path = local_path(files, name)
    return sha256_hex(files[name]) if path is None else _file_sha256(path)


def _file_sha256(path: Path) -> str:
    with path.open("rb") as handle:  # streamed: a million vectors are 2 GB
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _records(files: Mapping[str, bytes], name: str) -> RecordTable:
    if name == METADATA_FILE:  # a build made before records.bin: the same columns, in memory
        return RecordTable(pack_records(json.loads(files[METADATA_FILE])))
    path = local_path(files, name)
    try:
        return RecordTable.open_file(path) if path else RecordTable(files[name])
    except ValueError as exc:
        raise ArtifactError(f"{name}: {exc}") from exc
