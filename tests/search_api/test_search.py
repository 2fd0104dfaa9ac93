"""The search, index-control and worker endpoints, in-process with DRF's client."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
import requests
import torch
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.utils import timezone

from catalog.models import Image
from indexing.models import IndexBuild
from indexing.runtime import current_embedder
from indexing.selectors import gallery_rows
from tests.helpers import image_bytes
from tests.indexing.conftest import build_now

pytestmark = pytest.mark.django_db

SEARCH = "/api/search/similarity/"


def search(client, **fields):  # type: ignore[no-untyped-def]
    if "image" in fields:
        fields["image"] = SimpleUploadedFile("query.jpg", fields["image"])
        return client.post(SEARCH, fields, format="multipart")
    return client.post(SEARCH, fields, format="json")


def test_an_exact_copy_comes_back_first_with_every_field_from_the_database(any_storage, plain_api, indexed_gallery):
    image = indexed_gallery.by_key[("gear-b", "dent")][2]
    response = search(plain_api, image=indexed_gallery.images[image.pk], top_k=5)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "success" and body["version"] == "v2" and body["query_image"] == "query.jpg"
    assert body["index"]["build_id"] == indexed_gallery.defect_build.pk and body["index"]["model"] == "simsearch-tiny"
    assert body["index"]["is_untrained"] and "not meaningful" in body["warning"]
    first = body["results"][0]
    assert first["image_id"] == image.pk and first["similarity_score"] == pytest.approx(1.0, abs=1e-4)
    assert first == {
        **first,
        "local_path": image.file.name,
        "product_code": "gear-b",
        "product_name": "기어 B",
        "defect_code": "dent",
        "defect_name": "찍힘",
        "image_type": "defect",
    }
    scores = [r["similarity_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 5
    assert "찍힘".encode() in response.content  # UTF-8 text, not \\u escapes
    # The link downloads the image.
    url = first["storage_url"]
    if any_storage == "s3":
        assert "X-Amz-Signature" in url and requests.get(url, timeout=10).content == indexed_gallery.images[image.pk]
    else:
        assert (
            b"".join(plain_api.get(url.removeprefix("http://testserver")).streaming_content)
            == (indexed_gallery.images[image.pk])
        )


def test_search_by_image_id_can_leave_itself_out(plain_api, indexed_gallery):
    image = indexed_gallery.by_key[("bracket-a", "scratch")][0]
    with_self = search(plain_api, image_id=image.pk).json()["results"]
    assert with_self[0]["image_id"] == image.pk
    without = search(plain_api, image_id=image.pk, exclude_image_id=image.pk, top_k=20).json()["results"]
    assert image.pk not in [r["image_id"] for r in without] and len(without) == 15


def test_search_by_storage_url(any_storage, plain_api, indexed_gallery):
    image = indexed_gallery.by_key[("bracket-a", "dent")][1]
    for url in (image.file.name, default_storage.url(image.file.name)):
        if url.startswith("/"):
            url = "http://testserver" + url
        response = search(plain_api, storage_url=url)
        assert response.status_code == 200, (url, response.content)
        assert response.json()["results"][0]["image_id"] == image.pk


def test_filters_apply_inside_the_index_and_still_fill_top_k(plain_api, indexed_gallery):
    query = indexed_gallery.images[indexed_gallery.by_key[("bracket-a", "scratch")][0].pk]
    results = search(plain_api, image=query, top_k=4, product_code="gear-b", defect_code="dent").json()["results"]
    assert len(results) == 4 and {(r["product_code"], r["defect_code"]) for r in results} == {("gear-b", "dent")}
    results = search(plain_api, image=query, top_k=8, product_code="gear-b").json()["results"]
    assert len(results) == 8 and {r["product_code"] for r in results} == {"gear-b"}


def test_top_k_bounds_and_normal_index(plain_api, indexed_gallery):
    query = image_bytes(seed=1, size=(72, 72))
    assert len(search(plain_api, image=query, top_k=1).json()["results"]) == 1
    assert len(search(plain_api, image=query, top_k=100).json()["results"]) == 16  # the whole defect gallery
    normal = search(plain_api, image=query, image_type="normal", top_k=3).json()
    assert normal["index"]["build_id"] == indexed_gallery.normal_build.pk
    assert {r["image_type"] for r in normal["results"]} == {"normal"}
    assert all(r["defect_code"] is None for r in normal["results"])


def test_text_query(plain_api, indexed_gallery):
    response = search(plain_api, text="scratch on a metal surface", top_k=3)
    assert response.status_code == 200 and len(response.json()["results"]) == 3
    assert response.json()["query_image"] == "text:scratch on a metal surface"


def test_no_index_yet_is_503_saying_to_rebuild(plain_api, product):
    response = search(plain_api, image=image_bytes())
    assert response.status_code == 503 and "rebuild" in response.json()["detail"].lower()


def test_model_mismatch_is_409_telling_staff_to_rebuild(settings, tmp_path: Path, plain_api, indexed_gallery):
    checkpoint = tmp_path / "other-weights.pt"
    other = {k: v + 0.01 for k, v in current_embedder().model.state_dict().items()}
    torch.save(other, checkpoint)
    settings.SIMSEARCH_PRETRAINED = str(checkpoint)
    response = search(plain_api, image=image_bytes())
    assert response.status_code == 409 and "Rebuild" in response.json()["detail"]


def test_v1_mode_answers_from_the_legacy_folder(settings, tmp_path: Path, plain_api, db):
    folder = tmp_path / "legacy"
    folder.mkdir()
    blobs = {
        f"prod{p}_{d}_{i}.jpg": image_bytes(seed=10 * p + i + (5 if d == "dent" else 0))
        for p in (1, 2)
        for d in ("scratch", "dent")
        for i in range(3)
    }
    for name, data in blobs.items():
        (folder / name).write_bytes(data)
    settings.USE_INDEX_V2 = False
    settings.INDEX_DIR_V1 = str(folder)
    assert build_now(engine="v1").status == "ready"
    response = search(plain_api, image=blobs["prod2_dent_1.jpg"], top_k=3)
    body = response.json()
    assert response.status_code == 200 and body["version"] == "v1"
    first = body["results"][0]
    # The seed's V1 fields, plus the calibrated confidence every answer now carries.
    assert set(first) == {"image_path", "similarity_score", "product", "defect", "match_confidence", "confident_match"}
    assert first["image_path"].endswith("prod2_dent_1.jpg") and (first["product"], first["defect"]) == ("prod2", "dent")
    filtered = search(plain_api, image=blobs["prod2_dent_1.jpg"], top_k=3, product_code="prod1").json()["results"]
    assert {r["product"] for r in filtered} == {"prod1"}
    assert search(plain_api, image=blobs["prod2_dent_1.jpg"], product_code="prod9").status_code == 400


def test_rebuild_api(client, plain_api, staff_api, indexed_gallery, django_capture_on_commit_callbacks):
    assert client.post("/api/index/rebuild/", {"index_type": "defect"}).status_code in (401, 403)
    assert plain_api.post("/api/index/rebuild/", {"index_type": "defect"}).status_code == 403
    assert staff_api.post("/api/index/rebuild/", {"index_type": "everything"}).status_code == 400
    with django_capture_on_commit_callbacks(execute=True):
        first = staff_api.post("/api/index/rebuild/?index_type=normal")
    assert first.status_code == 202, first.content
    body = first.json()
    assert body["status"] == "queued" and [b["image_type"] for b in body["builds"]] == ["normal"]
    # Queued on commit (here: when the capture block ends; live, before the response is sent).
    assert IndexBuild.objects.get(pk=body["builds"][0]["id"]).task_id
    again = staff_api.post("/api/index/rebuild", {"index_type": "all"}, format="json")
    assert again.status_code == 202  # defect is new; normal is the one already queued
    builds = {b["image_type"]: b["id"] for b in again.json()["builds"]}
    assert builds["normal"] == body["builds"][0]["id"]
    third = staff_api.post("/api/index/rebuild/", {"index_type": "all"}, format="json")
    assert third.status_code == 200 and third.json()["status"] == "already_in_progress"


def test_builds_list_detail_activate_and_status(plain_api, staff_api, indexed_gallery):
    old = indexed_gallery.defect_build
    new = build_now("defect")
    listing = staff_api.get("/api/index/builds/?image_type=defect").json()
    assert [b["id"] for b in listing["results"]][:2] == [new.pk, old.pk]
    assert plain_api.get("/api/index/builds/").status_code == 403
    detail = staff_api.get(f"/api/index/builds/{new.pk}").json()
    assert detail["is_active"] and detail["status"] == "ready" and detail["vector_count"] == 16
    assert detail["progress_done"] == detail["progress_total"] == 16 and detail["model_fingerprint"]
    rolled_back = staff_api.post(f"/api/index/builds/{old.pk}/activate/")
    assert rolled_back.status_code == 200 and rolled_back.json()["is_active"]
    status = plain_api.get("/api/index/status/").json()
    assert status["engine"] == "v2" and status["active"]["v2"]["defect"]["id"] == old.pk
    assert status["loaded"]["v2/defect"] == old.pk
    failed = IndexBuild.objects.create(image_type="defect", model_name="m", pretrained="p", status="failed")
    assert staff_api.post(f"/api/index/builds/{failed.pk}/activate/").status_code == 409
    assert staff_api.post("/api/index/builds/999999/activate/").status_code == 404
    assert plain_api.post(f"/api/index/builds/{old.pk}/activate/").status_code == 403


def test_worker_registration_and_expiry(line_pc_api, product, scratch, django_capture_on_commit_callbacks):
    key = default_storage.save("line-uploads/cam1/frame-001.jpg", SimpleUploadedFile("x.jpg", image_bytes(seed=4)))
    response = line_pc_api.post(
        "/api/worker/image/register/",
        {"storage_url": key, "image_type": "query_temp", "product_code": "bracket-a", "defect_code": "scratch"},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    image = Image.objects.get(pk=body["image_id"])
    assert image.image_type == "query_temp" and image.file.name == key and image.width == 64
    expected = timezone.now() + timedelta(hours=24)
    assert abs((image.expires_at - expected).total_seconds()) < 60
    assert body["expires_at"]
    assert all(row.image_type != "query_temp" for row in gallery_rows(image_type="defect"))
    keep_key = default_storage.save("line-uploads/cam1/frame-002.jpg", SimpleUploadedFile("y.jpg", image_bytes()))
    keep = line_pc_api.post(
        "/api/worker/image/register/",
        {"storage_url": keep_key, "image_type": "query_temp", "product_code": "bracket-a"},
        format="json",
    ).json()
    Image.objects.filter(pk=image.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    with django_capture_on_commit_callbacks(execute=True):
        call_command("purge_temp_images", stdout=StringIO())
    assert not Image.objects.filter(pk=image.pk).exists() and not default_storage.exists(key)
    assert Image.objects.filter(pk=keep["image_id"]).exists() and default_storage.exists(keep_key)


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"storage_url": "line-uploads/none.jpg", "product_code": "bracket-a"}, 404),
        ({"storage_url": "http://169.254.169.254/latest/meta-data", "product_code": "bracket-a"}, 400),
        ({"storage_url": "../../etc/passwd", "product_code": "bracket-a"}, 400),
        ({"storage_url": "images/x.jpg", "product_code": "nope"}, 400),
        ({"storage_url": "images/x.jpg", "product_code": "bracket-a", "image_type": "defect"}, 400),
    ],
)
def test_worker_registration_rejects_bad_input(line_pc_api, product, fields, status):
    response = line_pc_api.post("/api/worker/image/register/", {"image_type": "query_temp", **fields}, format="json")
    assert response.status_code == status and response.json()["detail"]
    assert not Image.objects.exists()


def test_large_query_uploads_leave_no_temporary_file(settings, tmp_path: Path, plain_api, indexed_gallery):
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path / "uploads")
    (tmp_path / "uploads").mkdir()
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 10_000  # spool anything bigger to a temporary file
    big = image_bytes("PNG", size=(200, 200), seed=9)
    assert len(big) > 10_000
    assert search(plain_api, image=big).status_code == 200
    assert search(plain_api, image=b"x" * 50_000).status_code == 400
    assert list((tmp_path / "uploads").iterdir()) == []


def test_oversized_bodies_are_413(settings, plain_api, indexed_gallery):
    settings.SIMSEARCH_MAX_REQUEST_BYTES = 20_000
    response = search(plain_api, image=image_bytes("PNG", size=(200, 200)))
    assert response.status_code == 413 and "limit" in response.json()["detail"]


def test_search_is_throttled(monkeypatch, plain_api, indexed_gallery):
    from django.core.cache import cache
    from rest_framework.throttling import ScopedRateThrottle

    cache.clear()
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"search": "3/minute"})
    codes = [search(plain_api, text="dent").status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
    cache.clear()


def test_health_and_readiness(client, indexed_gallery):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.generic("TRACE", "/healthz").status_code == 405 and client.head("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready" and ready.json()["loaded"]["v2/defect"] == indexed_gallery.defect_build.pk


def test_not_ready_without_builds(client, db):
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["status"] == "not_ready"


def test_schema_documents_every_endpoint(client):
    spec = client.get("/api/schema/?format=json").json()
    paths = {p.rstrip("/") for p in spec["paths"]}
    for path in [
        "/api/search/similarity",
        "/api/index/rebuild",
        "/api/index/builds",
        "/api/index/builds/{id}",
        "/api/index/builds/{id}/activate",
        "/api/index/status",
        "/api/worker/image/register",
    ]:
        assert path in paths, path
    search_op = next(v for k, v in spec["paths"].items() if "search/similarity" in k)["post"]
    assert "multipart/form-data" in search_op["requestBody"]["content"]
    assert '"format": "binary"' in __import__("json").dumps(spec["components"]["schemas"])
