"""Catalog REST API over DRF's test client, with real storage."""

from __future__ import annotations

import json

import pytest
import requests
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile

from catalog.models import Image
from tests.helpers import image_bytes, png_header_bomb, stored_names

pytestmark = pytest.mark.django_db


def upload(client, data: bytes, **fields):  # type: ignore[no-untyped-def]
    body = {"file": SimpleUploadedFile("photo.jpg", data), **fields}
    return client.post("/api/images/", body, format="multipart")


def download(client, url: str) -> bytes:  # type: ignore[no-untyped-def]
    if url.startswith("http://testserver"):
        response = client.get(url.removeprefix("http://testserver"))
        assert response.status_code == 200
        return b"".join(response.streaming_content)
    response = requests.get(url, timeout=10)  # a presigned link to the real S3 server
    assert response.status_code == 200
    return response.content


def test_upload_lands_in_storage_and_its_link_downloads_the_same_bytes(any_storage, staff_api, product, scratch):
    data = image_bytes("JPEG", size=(96, 64), seed=11)
    response = upload(staff_api, data, image_type="defect", product_code="bracket-a", defect_code="scratch")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["product_code"] == "bracket-a" and body["defect_code"] == "scratch"
    assert (body["width"], body["height"], body["file_size"]) == (96, 64, len(data))
    assert body["local_path"] in stored_names()
    if any_storage == "s3":
        assert "X-Amz-Signature" in body["storage_url"]  # private object, presigned link
    assert download(staff_api, body["storage_url"]) == data


def test_korean_names_come_back_as_utf8_text(staff_api, product, scratch):
    upload(staff_api, image_bytes(), image_type="defect", product_code="bracket-a", defect_code="scratch")
    response = staff_api.get("/api/images/")
    assert response.status_code == 200
    assert "긁힘".encode() in response.content and b"\\u" not in response.content
    assert response.json()["results"][0]["defect_name_ko"] == "긁힘"


def test_list_filters_and_pagination(staff_api, product, scratch):
    for seed in range(3):
        upload(staff_api, image_bytes(seed=seed), image_type="defect", product_code="bracket-a", defect_code="scratch")
    upload(staff_api, image_bytes(seed=9), image_type="normal", product_code="bracket-a")
    everything = staff_api.get("/api/images/").json()
    assert everything["count"] == 4 and "next" in everything
    assert staff_api.get("/api/images/?image_type=normal").json()["count"] == 1
    assert staff_api.get("/api/images/?defect_code=scratch").json()["count"] == 3
    assert staff_api.get("/api/images/?product_code=other").json()["count"] == 0
    assert staff_api.get("/api/images/?page_size=2&page=2").status_code == 200


def test_paths_answer_without_trailing_slash(staff_api, product):
    assert staff_api.get("/api/products").status_code == 200
    assert staff_api.get("/api/products/").status_code == 200
    assert staff_api.get(f"/api/products/{product.pk}").json()["product_code"] == "bracket-a"


def test_product_and_defect_crud(staff_api):
    created = staff_api.post(
        "/api/defect-types/", {"defect_code": "dent", "defect_name_ko": "찍힘", "defect_name_en": "Dent"}, format="json"
    )
    assert created.status_code == 201
    duplicate = staff_api.post(
        "/api/defect-types/", {"defect_code": "dent", "defect_name_ko": "x", "defect_name_en": "y"}, format="json"
    )
    # A taken code is a conflict with an existing row, not malformed input.
    assert duplicate.status_code == 409 and "defect_code" in duplicate.json()["errors"]
    assert duplicate.json()["code"] == "conflict"
    taken_and_bad = staff_api.post(
        "/api/defect-types/", {"defect_code": "dent", "defect_name_ko": "", "defect_name_en": "y"}, format="json"
    )
    assert taken_and_bad.status_code == 400  # anything malformed besides the collision stays a 400
    bad_code = staff_api.post("/api/products/", {"product_code": "a b/../c", "product_name": "x"}, format="json")
    assert bad_code.status_code == 400 and "product_code" in bad_code.json()["errors"]
    product = staff_api.post("/api/products/", {"product_code": "gear-b", "product_name": "기어 B"}, format="json")
    assert product.status_code == 201
    assert (
        staff_api.patch(f"/api/products/{product.json()['id']}/", {"product_name": "Gear B"}, format="json").json()[
            "product_name"
        ]
        == "Gear B"
    )


def test_deleting_a_product_with_images_is_a_conflict(staff_api, product):
    upload(staff_api, image_bytes(), image_type="normal", product_code="bracket-a")
    response = staff_api.delete(f"/api/products/{product.pk}/")
    assert response.status_code == 409 and "referenced" in response.json()["detail"]


@pytest.mark.django_db(transaction=True)
def test_deleting_an_image_removes_its_file(staff_api, product):
    body = upload(staff_api, image_bytes(), image_type="normal", product_code="bracket-a").json()
    assert default_storage.exists(body["local_path"])
    assert staff_api.delete(f"/api/images/{body['id']}/").status_code == 204
    assert not default_storage.exists(body["local_path"])


def test_permissions(client, plain_api, staff_api, product):
    assert client.get("/api/products/").status_code in (401, 403)
    assert plain_api.get("/api/products/").status_code == 200
    assert (
        plain_api.post("/api/products/", {"product_code": "x", "product_name": "x"}, format="json").status_code == 403
    )
    assert upload(plain_api, image_bytes(), image_type="normal", product_code="bracket-a").status_code == 403
    assert not Image.objects.exists()


BAD_UPLOADS = [
    ("text", b"just some text", {"image_type": "normal", "product_code": "bracket-a"}, "not an image"),
    (
        "truncated",
        image_bytes("JPEG", size=(300, 300))[:500],
        {"image_type": "normal", "product_code": "bracket-a"},
        "decoded",
    ),
    ("bomb", png_header_bomb(), {"image_type": "normal", "product_code": "bracket-a"}, "pixels"),
    ("too-large", image_bytes("PNG", size=(400, 400)), {"image_type": "normal", "product_code": "bracket-a"}, "limit"),
    ("unknown-product", image_bytes(), {"image_type": "normal", "product_code": "nope"}, "Unknown product"),
    (
        "unknown-defect",
        image_bytes(),
        {"image_type": "defect", "product_code": "bracket-a", "defect_code": "nope"},
        "Unknown defect",
    ),
    ("defect-without-type", image_bytes(), {"image_type": "defect", "product_code": "bracket-a"}, "defect type"),
    (
        "normal-with-defect",
        image_bytes(),
        {"image_type": "normal", "product_code": "bracket-a", "defect_code": "scratch"},
        "defect type",
    ),
    ("bad-image-type", image_bytes(), {"image_type": "query_temp", "product_code": "bracket-a"}, "valid choice"),
    (
        "bad-config",
        image_bytes(),
        {"image_type": "normal", "product_code": "bracket-a", "preprocessing_config": "[1]"},
        "JSON object",
    ),
]


@pytest.mark.parametrize(
    ("data", "fields", "says"), [case[1:] for case in BAD_UPLOADS], ids=[c[0] for c in BAD_UPLOADS]
)
def test_bad_uploads_get_a_clear_400_and_write_nothing(
    settings, any_storage, staff_api, product, scratch, data, fields, says
):
    settings.SIMSEARCH_MAX_UPLOAD_BYTES = 200_000
    response = upload(staff_api, data, **fields)
    assert response.status_code == 400, response.content
    assert response["Content-Type"].startswith("application/json")
    assert says.lower() in json.dumps(response.json(), ensure_ascii=False).lower()
    assert not Image.objects.exists()
    assert stored_names() == []


def test_missing_file_is_a_400(staff_api, product):
    response = staff_api.post("/api/images/", {"image_type": "normal", "product_code": "bracket-a"}, format="multipart")
    assert response.status_code == 400 and "file" in response.json()["errors"]


def test_unknown_api_path_is_json_404(staff_api):
    response = staff_api.get("/api/nothing-here/")
    assert response.status_code == 404 and response.json()["detail"]


def test_openapi_schema_documents_uploads_as_binary(client):
    schema = client.get("/api/schema/?format=json")
    assert schema.status_code == 200
    spec = schema.json()
    assert {"/api/products/", "/api/defect-types/", "/api/images/"} <= {p.rstrip("/") + "/" for p in spec["paths"]}
    upload_schema = json.dumps(spec["components"]["schemas"]["ImageUploadRequest"])
    assert '"format": "binary"' in upload_schema
    docs = client.get("/api/docs/")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()
