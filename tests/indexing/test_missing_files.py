"""A build confirms each gallery object exists before it trusts a cached embedding (issue 8,
item 2). Local folder and SeaweedFS S3."""

from __future__ import annotations

import json

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import InMemoryStorage, default_storage

from catalog.storage import existing_names, read_object
from indexing.artifacts import MANIFEST_FILE
from indexing.models import BuildStatus
from search_api.index_cache import index_cache
from tests.indexing.conftest import build_now

pytestmark = pytest.mark.django_db


def test_existing_names_answers_for_many_folders_at_once(any_storage):
    present = [
        default_storage.save(name, ContentFile(b"x"))
        for name in ("images/defect/2026/01/a.jpg", "images/defect/2026/01/b.jpg", "images/normal/2025/12/c.png")
    ]
    present.append(default_storage.save("root-level.jpg", ContentFile(b"x")))
    default_storage.save("images/defect/2026/01/deeper/d.jpg", ContentFile(b"x"))
    asked = [
        *present,
        "images/defect/2026/01/gone.jpg",
        "images/defect/2026/02/gone.jpg",
        "images/defect/2026",  # a folder is not an object
        "images/defect/2026/01/deeper",
        "nowhere.jpg",
    ]
    assert existing_names(asked) == set(present)
    assert existing_names([]) == set()


def test_existing_names_falls_back_to_exists_on_other_backends():
    storage = InMemoryStorage()
    kept = storage.save("a/b.jpg", ContentFile(b"x"))
    assert existing_names([kept, "a/c.jpg"], storage=storage) == {kept}


def test_a_file_gone_from_storage_leaves_the_next_index(any_storage, staff_api, gallery):
    first = build_now()
    assert first.status == BuildStatus.READY and first.vector_count == 6, first.error
    gone = gallery[2]
    default_storage.delete(gone.file.name)

    rebuilt = build_now()
    assert rebuilt.status == BuildStatus.READY, rebuilt.error
    # Its embedding is cached from the first build, but the file is gone: counted, left out.
    assert (rebuilt.missing_count, rebuilt.vector_count, rebuilt.reused_count) == (1, 5, 5)
    assert rebuilt.timings["exists_check_s"] >= 0
    manifest = json.loads(read_object(f"{rebuilt.artifact_prefix}/{MANIFEST_FILE}"))
    assert manifest["counts"]["missing_count"] == 1 and "exists_check_s" in manifest["timings"]

    index_cache.reset()
    loaded = index_cache.get(engine="v2", image_type="defect")
    assert loaded.build_id == rebuilt.pk and gone.pk not in loaded.records and loaded.size == 5
    response = staff_api.post("/api/search/similarity/", {"image_id": gallery[0].pk, "top_k": 100}, format="json")
    assert response.status_code == 200, response.content
    returned = [result["image_id"] for result in response.json()["results"]]
    assert len(returned) == 5 and gone.pk not in returned


def test_every_gallery_file_gone_fails_the_build_and_keeps_the_active_one(any_storage, gallery):
    good = build_now()
    for image in gallery:
        default_storage.delete(image.file.name)
    failed = build_now()
    assert failed.status == BuildStatus.FAILED and "in storage" in failed.error
    good.refresh_from_db()
    assert good.is_active
