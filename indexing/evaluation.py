"""Measure a stored build's retrieval quality: again on its own vectors (leave-one-out), or on a
held-out folder of labelled photos (`<product>_<defect>_<anything>.<ext>`, as V1 names them) — a
plant's own test set. Reads only: `manage.py evaluate_index` prints what these return."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.utils.translation import gettext

from indexing import artifact_store
from indexing.artifacts import LoadedIndex, unpack_artifacts
from indexing.legacy import scan_legacy_folder
from indexing.models import BuildStatus, IndexBuild
from indexing.quality import evaluate_build, evaluate_queries, index_vectors
from indexing.runtime import current_embedder
from simsearch_project.errors import Conflict, NotFound


@dataclass(frozen=True)
class FolderEvaluation:
    quality: dict[str, Any]
    skipped: list[tuple[str, str]]  # (relative name, why it was not a query)


def build_to_evaluate(*, build_id: int | None, image_type: str, engine: str) -> IndexBuild:
    """The given build, or the active build of `image_type` and `engine`; it must be ready."""
    if build_id is not None:
        build = IndexBuild.objects.filter(pk=build_id).first()
        if build is None:
            raise NotFound(gettext("No index build %(id)s.") % {"id": build_id})
    else:
        build = IndexBuild.objects.filter(image_type=image_type, engine=engine, is_active=True).first()
        if build is None:
            raise NotFound(
                gettext("There is no active %(engine)s %(image_type)s build; run a rebuild first.")
                % {"engine": engine, "image_type": image_type}
            )
    if build.status != BuildStatus.READY:
        raise Conflict(gettext("Build %(id)s is not ready.") % {"id": build.pk}, code="not_ready")
    return build


def _loaded(build: IndexBuild) -> LoadedIndex:
    """The build's files from storage, verified against the manifest hash the database holds."""
    return unpack_artifacts(artifact_store.storage_read(build.artifact_prefix), manifest_sha256=build.manifest_sha256)


def _gallery(loaded: LoadedIndex) -> tuple[Any, Any, list[dict[str, Any]]]:
    ids, vectors = index_vectors(loaded.index)
    return ids, vectors, [loaded.records[int(image_id)] for image_id in ids]


def build_evaluate(*, build: IndexBuild) -> dict[str, Any]:
    """Leave-one-out quality of the build's stored vectors (what the build measured when it was made)."""
    _, vectors, records = _gallery(_loaded(build))
    return evaluate_build(image_type=build.image_type, vectors=vectors, records=records)


def build_evaluate_folder(*, build: IndexBuild, folder: Path) -> FolderEvaluation:
    """Quality of the build on the labelled photos in `folder` of its image type (defect photos for
    the defect index, `normal`/`ok` ones for the normal index), embedded with the configured model;
    a gallery image with the same bytes as a query is left out of that query's search."""
    files, skipped = scan_legacy_folder(folder)
    queries = [f for f in files if f.image_type == build.image_type]
    skipped += [
        (str(f.path.relative_to(folder)), f"a {f.image_type} photo, not a {build.image_type} one")
        for f in files
        if f.image_type != build.image_type
    ]
    if not queries:
        raise NotFound(
            gettext("No %(image_type)s photos named <product>_<defect>_<anything>.<ext> in %(folder)s.")
            % {"image_type": build.image_type, "folder": folder.name}
        )
    embedder = current_embedder()
    if embedder.fingerprint != build.model_fingerprint:
        raise Conflict(
            gettext("Build %(id)s was made with another model than the configured one; its vectors cannot be compared.")
            % {"id": build.pk},
            code="model_mismatch",
        )
    encoded = embedder.encode_images([f.path.read_bytes for f in queries])
    present = [queries[i] for i in encoded.present]
    skipped += [(str(queries[i].path.relative_to(folder)), "could not be read") for i in encoded.missing]
    loaded = _loaded(build)
    _, vectors, records = _gallery(loaded)
    quality = evaluate_queries(
        image_type=build.image_type,
        vectors=vectors,
        records=records,
        query_vectors=loaded.query_vector(encoded.vectors),  # in the build's space (catalog adaptation)
        query_products=[f.product for f in present],
        query_defects=[f.defect if f.image_type == "defect" else None for f in present],
        query_hashes=[hashlib.sha256(f.path.read_bytes()).hexdigest() for f in present],
    )
    return FolderEvaluation(quality=quality, skipped=skipped)
