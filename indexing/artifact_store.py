"""Where build artifacts live: the configured storage (shared by every host) and a local
cache folder per serving host (fast restarts; the fallback when the database is down)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage

from catalog.storage import delete_prefix, read_object, resolved_name
from indexing.artifacts import (
    ALL_FILES,
    INDEX_FILE,
    MANIFEST_FILE,
    METADATA_FILE,
    RECORDS_FILE,
    SERVING_EXTRAS,
    CachedFiles,
    local_path,
    pack_artifacts,
    sha256_hex,
)


def storage_write(prefix: str, files: Mapping[str, bytes]) -> None:
    """Write the files under `prefix`, manifest last: a reader that finds the manifest finds
    the rest (and the build row only turns `ready` after this returns). Files in a local folder
    (pack_artifacts) are streamed from disk, not read into memory first."""
    ordered = sorted(files, key=lambda name: name == "manifest.json")
    for name in ordered:
        key = f"{prefix}/{name}"
        path = local_path(files, name)
        if path is None:
            saved = default_storage.save(key, ContentFile(files[name]))
        else:
            with path.open("rb") as handle:
                saved = default_storage.save(key, File(handle, name=name))
        if saved != key:
            raise RuntimeError(f"storage renamed {key} to {saved}; the build prefix was not empty")


def pack_to_storage(prefix: str, **pack: Any) -> str:
    """pack_artifacts(**pack) into a temporary folder on this host's disk (in the data folder, not
    a possibly memory-backed /tmp), streamed to storage under `prefix` (storage_write); the
    folder goes either way. Returns the manifest's sha256, which the build row pins."""
    with tempfile.TemporaryDirectory(prefix=".pack-", dir=settings.DATA_DIR) as folder:
        files = pack_artifacts(into=Path(folder) / "files", **pack)
        storage_write(prefix, files)
        return sha256_hex(files[MANIFEST_FILE])


def serving_names(manifest_bytes: bytes) -> list[str]:
    """The files a serving process needs besides the manifest. embeddings.pt is for audits and
    re-use; metadata.json only for builds made before records.bin."""
    listed = json.loads(manifest_bytes).get("files", {})
    names = [INDEX_FILE] + ([] if RECORDS_FILE in listed else [METADATA_FILE])
    return names + [name for name in SERVING_EXTRAS if name in listed]


def storage_read(prefix: str) -> dict[str, bytes]:
    manifest = read_object(f"{prefix}/{MANIFEST_FILE}")
    return {MANIFEST_FILE: manifest} | {name: read_object(f"{prefix}/{name}") for name in serving_names(manifest)}


def storage_index_entry(prefix: str, manifest_sha256: str) -> dict | None:
    """The manifest's "index" entry of a build (kind, lists, recall@10 measured at build time);
    None for a build without files or made before the entry existed."""
    if not prefix or not manifest_sha256:
        return None
    data = read_object(f"{prefix}/{MANIFEST_FILE}")
    if sha256_hex(data) != manifest_sha256:
        return None
    entry = json.loads(data).get("index")
    return entry if isinstance(entry, dict) else None


def storage_delete(prefix: str) -> int:
    return delete_prefix(prefix) if prefix else 0


def _cache_root() -> Path:
    return Path(settings.SIMSEARCH_INDEX_CACHE_DIR)


def cache_put(build_id: int, files: dict[str, bytes]) -> None:
    """Atomically place a build's files in the local cache (write to a temp dir, rename)."""
    root = _cache_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"build-{build_id}"
    if target.exists():
        return
    staging = Path(tempfile.mkdtemp(prefix=f".build-{build_id}-", dir=root))
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        os.replace(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not target.exists():
            raise


def cache_fill(build_id: int, prefix: str) -> CachedFiles:
    """Copy a build's serving files from storage into the local cache, streamed (a million
    vectors are 2 GB), and return them there; unpack_artifacts checks them against the manifest.
    Processes that start together each copy to their own staging folder; the first rename wins."""
    root = _cache_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"build-{build_id}"
    if not target.exists():
        staging = Path(tempfile.mkdtemp(prefix=f".build-{build_id}-", dir=root))
        try:
            manifest = read_object(f"{prefix}/{MANIFEST_FILE}")
            for name in serving_names(manifest):
                _copy_object(f"{prefix}/{name}", staging / name)
            (staging / MANIFEST_FILE).write_bytes(manifest)
            os.replace(staging, target)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not target.exists():
                raise
    found = cache_get(build_id)
    if found is None:
        raise FileNotFoundError(target)
    return found


def _copy_object(name: str, path: Path) -> None:
    resolved_name(name)  # a local folder's link out of the media folder is no object
    with default_storage.open(name, "rb") as source, path.open("wb") as target:
        shutil.copyfileobj(source, target, 8 * 1024 * 1024)


def cache_get(build_id: int) -> CachedFiles | None:
    """The build's files in the local cache, read (or memory-mapped) when used; None if absent."""
    folder = _cache_root() / f"build-{build_id}"
    if not folder.is_dir():
        return None
    try:
        return CachedFiles(folder, frozenset(ALL_FILES) | frozenset(SERVING_EXTRAS))
    except FileNotFoundError:  # removed meanwhile (pruned, or a damaged copy)
        return None


def cache_build_ids() -> list[int]:
    root = _cache_root()
    if not root.is_dir():
        return []
    return [int(path.name[6:]) for path in root.iterdir() if path.name.startswith("build-") and path.name[6:].isdigit()]


def cache_remove(build_id: int) -> None:
    shutil.rmtree(_cache_root() / f"build-{build_id}", ignore_errors=True)


def cache_pointed_ids() -> set[int]:
    """Builds a pointer file names (what a process would serve with the database down)."""
    pointers = (_read_pointer(path) for path in _cache_root().glob("active-*.json"))
    return {pointer[0] for pointer in pointers if pointer}


def _pointer_path(engine: str, image_type: str) -> Path:
    return _cache_root() / f"active-{engine}-{image_type}.json"


def cache_pointer_set(engine: str, image_type: str, build_id: int, manifest_sha256: str) -> None:
    """Remember the last active build, for starting while the database is unreachable."""
    path = _pointer_path(engine, image_type)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps({"build_id": build_id, "manifest_sha256": manifest_sha256}))
    os.replace(staging, path)


def cache_pointer_get(engine: str, image_type: str) -> tuple[int, str] | None:
    return _read_pointer(_pointer_path(engine, image_type))


def _read_pointer(path: Path) -> tuple[int, str] | None:
    try:
        data = json.loads(path.read_text())
        return int(data["build_id"]), str(data["manifest_sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
