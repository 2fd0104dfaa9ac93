"""Hostile or malformed requests get a 4xx JSON answer that names the problem, never a 500, and no
answer shows a path of the server's file system."""

from __future__ import annotations

import json
import os

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from indexing.models import IndexBuild
from tests.helpers import image_bytes

pytestmark = pytest.mark.django_db

SEARCH = "/api/search/similarity/"
DEEP = "[" * 1000 + "]" * 1000
WRITE_ENDPOINTS = [SEARCH, "/api/worker/image/register/", "/api/products/", "/api/defect-types/", "/api/index/rebuild/"]


def assert_clear_400(response, *words: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == 400, response.content[:500]
    body = response.json()
    assert body["detail"] and all(word in json.dumps(body) for word in words), body
    return body


@pytest.fixture
def api(staff_user) -> APIClient:  # type: ignore[no-untyped-def]
    client = APIClient(raise_request_exception=False)
    client.force_authenticate(staff_user)
    return client


@pytest.mark.parametrize("path", WRITE_ENDPOINTS)
def test_deeply_nested_json_is_a_400(api, path):
    assert_clear_400(api.post(path, data=DEEP, content_type="application/json"), "nested")


@pytest.mark.parametrize("path", WRITE_ENDPOINTS)
def test_a_body_that_is_not_utf8_is_a_400(api, path):
    assert_clear_400(api.post(path, data=b'{"text": "\xff\xfe"}', content_type="application/json"), "utf-8")


def test_deeply_nested_json_inside_an_upload_form_is_a_400(api, product):
    upload = SimpleUploadedFile("part.png", image_bytes("PNG", seed=4))
    response = api.post(
        "/api/images/",
        {"file": upload, "image_type": "normal", "product_code": product.product_code, "preprocessing_config": DEEP},
        format="multipart",
    )
    assert_clear_400(response, "preprocessing_config")


def test_deeply_nested_json_in_the_admin_image_form_is_a_form_error(client, staff_user, product):
    client.force_login(staff_user)
    upload = SimpleUploadedFile("part.png", image_bytes("PNG", seed=5))
    response = client.post(
        "/admin/catalog/image/add/",
        {"file": upload, "image_type": "normal", "product": product.pk, "preprocessing_config": DEEP},
    )
    assert response.status_code == 200 and "Enter a valid JSON" in response.content.decode()


@pytest.mark.parametrize(
    ("storage_url", "words"),
    [
        ("images/", ["folder"]),
        ("/media/images/defect/", ["folder"]),
        ("images/" + "a" * 300 + ".png", ["too long"]),
        ("images/" + "/".join(["abc"] * 400) + ".png", ["too long"]),
    ],
    ids=["folder", "media-folder", "long-segment", "long-key"],
)
def test_storage_urls_naming_no_object_are_400_without_server_paths(api, settings, product, storage_url, words):
    register = {"storage_url": storage_url, "image_type": "query_temp", "product_code": product.product_code}
    for path, fields in ((SEARCH, {"storage_url": storage_url}), ("/api/worker/image/register/", register)):
        body = assert_clear_400(api.post(path, fields, format="json"), *words)
        assert str(settings.MEDIA_ROOT) not in json.dumps(body)


def test_a_folder_behind_an_object_name_is_404_without_server_paths(api, settings, product):
    """`images/defect` has no trailing slash, so it passes the key checks, but is a folder here."""
    os.makedirs(settings.MEDIA_ROOT / "images" / "defect", exist_ok=True)
    response = api.post(SEARCH, {"storage_url": "images/defect"}, format="json")
    assert response.status_code == 404, response.content
    assert str(settings.MEDIA_ROOT) not in response.content.decode()
    assert "images/defect" in response.json()["detail"]


def test_an_image_far_from_square_is_refused_naming_the_limit(api, product):
    strip = SimpleUploadedFile("strip.png", image_bytes("PNG", size=(1, 60000)))
    response = api.post(SEARCH, {"image": strip}, format="multipart")
    assert_clear_400(response, "SIMSEARCH_MAX_ASPECT_RATIO", "1x60000")
    upload = SimpleUploadedFile("strip.png", image_bytes("PNG", size=(60000, 1)))
    response = api.post("/api/images/", {"file": upload, "image_type": "normal", "product_code": product.product_code})
    assert_clear_400(response, "SIMSEARCH_MAX_ASPECT_RATIO")


def test_normal_search_with_a_defect_code_is_a_400(api, product):
    response = api.post(SEARCH, {"text": "a part", "image_type": "normal", "defect_code": "scratch"}, format="json")
    assert_clear_400(response, "defect_code", "Normal images have no defect type")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("[]", "application/json"),
        ('["defect"]', "application/json"),
        ("", "application/json"),
        ("{}", "application/json"),
    ],
    ids=["empty-list", "list", "empty-body", "empty-object"],
)
def test_rebuild_needs_an_explicit_index_type(api, body, content_type):
    assert_clear_400(api.post("/api/index/rebuild/", data=body, content_type=content_type), "index_type")
    assert not IndexBuild.objects.exists()


@pytest.mark.parametrize("body", [b"text=\xff\xfe", b"text=%ff%fe", b"%ff=dent&text=x"], ids=["raw", "escaped", "name"])
def test_a_form_that_is_not_utf8_is_a_400(api, body):
    response = api.post(SEARCH, data=body, content_type="application/x-www-form-urlencoded")
    assert_clear_400(response, "UTF-8")


def test_a_multipart_field_that_is_not_utf8_is_a_400(api, product):
    boundary = "simsearch-boundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="text"\r\n\r\n'.encode()
        + b"\xff\xfe dent\r\n"
        + f"--{boundary}--\r\n".encode()
    )
    response = api.post(SEARCH, data=body, content_type=f"multipart/form-data; boundary={boundary}")
    assert_clear_400(response, "UTF-8")
    ok = api.post(SEARCH, {"text": "긁힘 dent"}, format="multipart")  # real UTF-8 passes (503: no index)
    assert ok.status_code == 503
