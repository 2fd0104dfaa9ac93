"""Each audience sees only what it needs (issue 8, item 9): the index status summary for
clients, other clients' temporary images hidden, and index files never served under /media/."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile

from catalog.models import Image
from catalog.roles import CATALOG_EDITOR, INDEX_OPERATOR, LINE_PC
from tests.conftest import token_client
from tests.helpers import image_bytes
from tests.indexing.conftest import add_images, build_now

pytestmark = pytest.mark.django_db

PUBLIC_BUILD_FIELDS = {
    "id",
    "image_type",
    "engine",
    "model_name",
    "pretrained",
    "is_untrained",
    "vector_count",
    "finished_at",
    "activated_at",
}
INTERNAL_BUILD_FIELDS = {"requested_by", "artifact_prefix", "task_id", "model_fingerprint", "error", "worker"}


def test_index_status_gives_clients_a_summary_and_operators_everything(
    plain_api, role_user, staff_user, product, scratch
):
    add_images(product, scratch, 3)
    build = build_now(requested_by=staff_user)
    public = plain_api.get("/api/index/status/").json()["active"]["v2"]["defect"]
    assert set(public) == PUBLIC_BUILD_FIELDS
    assert public["id"] == build.pk and public["vector_count"] == 3 and public["is_untrained"] is True
    full = token_client(role_user(INDEX_OPERATOR)).get("/api/index/status/").json()["active"]["v2"]["defect"]
    assert full["artifact_prefix"] == build.artifact_prefix and full["requested_by"] == staff_user.username
    assert full["model_fingerprint"] == build.model_fingerprint and PUBLIC_BUILD_FIELDS < set(full)
    assert not INTERNAL_BUILD_FIELDS & set(public)


def register(api, name: str) -> int:  # type: ignore[no-untyped-def]
    key = default_storage.save(f"line-uploads/{name}", SimpleUploadedFile(name, image_bytes(seed=len(name))))
    response = api.post(
        "/api/worker/image/register/",
        {"storage_url": key, "image_type": "query_temp", "product_code": "bracket-a"},
        format="json",
    )
    assert response.status_code == 201, response.content
    return response.json()["image_id"]


def listed(api, **params) -> set[int]:  # type: ignore[no-untyped-def]
    return {row["id"] for row in api.get("/api/images/", params).json()["results"]}


def test_temporary_images_are_seen_by_their_registrant_and_catalog_viewers_only(role_user, product, scratch):
    (catalog,) = add_images(product, scratch, 1)
    line_a, line_b = role_user(LINE_PC), role_user(LINE_PC)
    api_a, api_b = token_client(line_a), token_client(line_b)
    mine, theirs = register(api_a, "cam-a.jpg"), register(api_b, "cam-bb.jpg")
    assert Image.objects.get(pk=mine).registered_by == line_a
    assert listed(api_a) == {catalog.pk, mine}
    assert listed(api_a, image_type="query_temp") == {mine}
    assert api_a.get(f"/api/images/{theirs}/").status_code == 404
    assert api_a.get(f"/api/images/{mine}/").json()["id"] == mine
    assert listed(api_b) == {catalog.pk, theirs}
    editor = token_client(role_user(CATALOG_EDITOR))  # holds catalog.view_image
    assert listed(editor) == {catalog.pk, mine, theirs}
    assert editor.get(f"/api/images/{theirs}/").status_code == 200
    # A registrant's account removed: its images stay hidden from other clients.
    line_b.delete()
    assert listed(api_a, image_type="query_temp") == {mine} and listed(editor) == {catalog.pk, mine, theirs}


def test_media_serves_pictures_but_never_index_files(client, line_pc_api, product, scratch):
    (image,) = add_images(product, scratch, 1)
    build = build_now()
    assert client.get(f"/media/{image.file.name}").status_code == 200  # anonymous, as today (local mode)
    assert client.get(f"/media/{image.thumbnail.name}").status_code == 200
    temp = Image.objects.get(pk=register(line_pc_api, "cam-c.jpg"))
    assert client.get(f"/media/{temp.file.name}").status_code == 200
    files = ["metadata.json", "manifest.json", "faiss_index.bin", "embeddings.pt"]
    assert all(default_storage.exists(f"{build.artifact_prefix}/{name}") for name in files)
    for name in files:
        for path in (
            f"/media/{build.artifact_prefix}/{name}",
            f"/media/images/../{build.artifact_prefix}/{name}",
            f"/media//{build.artifact_prefix}/{name}",
        ):
            response = client.get(path)
            assert response.status_code == 404, path
            assert b"image_id" not in b"".join(getattr(response, "streaming_content", [response.content]))
    stray = default_storage.save("line-uploads/never-registered.jpg", SimpleUploadedFile("x.jpg", image_bytes()))
    assert client.get(f"/media/{stray}").status_code == 404
    assert client.get("/media/").status_code == 404
    assert client.get("/media/images/").status_code == 404


def test_media_names_the_file_system_cannot_hold_are_404(client, settings):
    import os

    assert client.get("/media/images/" + "a" * 300).status_code == 404
    assert client.get("/media/thumbnails/" + "b" * 300 + ".jpg").status_code == 404
    # A link under images/ that leads to the index files is judged by where it leads.
    default_storage.save(f"{settings.SIMSEARCH_INDEX_PREFIX}/v2/defect/000001-ab/metadata.json", ContentFile(b"[]"))
    (image_dir := settings.MEDIA_ROOT / "images").mkdir(parents=True, exist_ok=True)
    os.symlink(settings.MEDIA_ROOT / settings.SIMSEARCH_INDEX_PREFIX, image_dir / "builds")
    assert client.get("/media/images/builds/v2/defect/000001-ab/metadata.json").status_code == 404


def test_another_clients_temporary_image_cannot_be_searched_with(role_user, product, scratch):
    line_a, line_b = token_client(role_user(LINE_PC)), token_client(role_user(LINE_PC))
    theirs = register(line_b, "cam-d.jpg")
    response = line_a.post("/api/search/similarity/", {"image_id": theirs}, format="json")
    assert response.status_code == 404  # as for an id that does not exist
    assert line_b.post("/api/search/similarity/", {"image_id": theirs}, format="json").status_code != 404
