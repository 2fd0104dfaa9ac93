"""The API does what its OpenAPI schema says, in the places a schema fuzzer found it did not:
error statuses documented on every operation, nullable fields marked, JSON types taken at their
word, unknown catalog fields and unreadable query parameters refused, taken codes a 409.
(tests/e2e/test_api_fuzz.py runs schemathesis over all of it against a live server.)"""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from tests.helpers import image_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(staff_user) -> APIClient:  # type: ignore[no-untyped-def]
    client = APIClient()
    client.force_authenticate(staff_user)
    return client


@pytest.fixture
def spec(client) -> dict:  # type: ignore[no-untyped-def]
    return client.get("/api/schema/?format=json").json()


def test_every_operation_documents_the_errors_it_can_answer(spec):
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            assert {"400", "404", "414", "503"} <= codes, (method, path, codes)
            assert {"401", "403"} <= codes, (method, path, codes)  # every /api/ operation needs a sign-in
            if method in ("post", "put", "patch"):
                assert {"409", "413", "415"} <= codes, (method, path, codes)
            assert "text/html" in operation["responses"]["414"]["content"]  # from the HTTP server
    search = spec["paths"]["/api/search/similarity/"]["post"]["responses"]
    assert "429" in search  # throttled
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["detail"] and error["properties"]["errors"]["type"] == "object"


@pytest.mark.parametrize(
    ("component", "field"),
    [
        ("ImageOutput", "defect_code"),
        ("ImageOutput", "defect_name_ko"),
        ("ImageOutput", "defect_name_en"),
        ("IndexBuild", "duration_seconds"),
        ("IndexBuild", "requested_by"),
    ],
)
def test_fields_that_can_be_null_are_marked_nullable(spec, component, field):
    assert spec["components"]["schemas"][component]["properties"][field].get("nullable") is True


def test_catalog_request_bodies_allow_no_other_fields(spec, api):
    assert spec["components"]["schemas"]["ProductRequest"]["additionalProperties"] is False
    response = api.post("/api/products/", {"product_code": "gear-b", "product_nmae": "typo"}, format="json")
    assert response.status_code == 400 and response.json()["errors"]["product_nmae"] == ["Unknown field."]


def test_json_types_are_taken_at_their_word_but_forms_keep_working(api, product):
    wrong_type = api.post("/api/products/", {"product_code": "gear-b", "product_name": 5}, format="json")
    assert wrong_type.status_code == 400 and "product_name" in wrong_type.json()["errors"]
    top_k_text = api.post("/api/search/similarity/", {"text": "dent", "top_k": "5"}, format="json")
    assert top_k_text.status_code == 400 and "top_k" in top_k_text.json()["errors"]
    # A form has only strings: top_k "5" there is a number (503: no index yet, past validation).
    form = api.post("/api/search/similarity/", {"text": "dent", "top_k": "5"}, format="multipart")
    assert form.status_code == 503 and form.json()["code"] == "no_index"


@pytest.mark.parametrize(
    "query",
    [
        "page_size=0",
        "page_size=501",
        "page_size=null",
        "page=last",
        "page=0",
        "image_type=",
        "image_type=everything",
        "product_code=bracket-a&image_type=normal&image_type=",
    ],
)
def test_unreadable_list_parameters_are_400_not_ignored(api, product, query):
    response = api.get(f"/api/images/?{query}")
    assert response.status_code == 400, (query, response.content)
    assert response.json()["errors"]


def test_boolean_filters_take_true_or_false(api):
    assert api.get("/api/index/builds/?is_active=maybe").status_code == 400
    assert api.get("/api/index/builds/?is_active=false").status_code == 200


def test_a_taken_code_is_a_409_conflict(api, product):
    response = api.post("/api/products/", {"product_code": product.product_code, "product_name": "x"}, format="json")
    assert response.status_code == 409 and response.json()["code"] == "conflict"


def test_ids_in_paths_are_digits_only(api, product):
    assert api.get(f"/api/products/{product.pk}/").status_code == 200
    assert api.get(f"/api/products/%0C{product.pk}/").status_code == 404
    assert api.get(f"/api/products/+{product.pk}/").status_code == 404


def test_uploads_take_multipart_only(api, product):
    data = {"image_type": "normal", "product_code": product.product_code}
    assert api.post("/api/images/", data, format="json").status_code == 415
    upload = SimpleUploadedFile("part.png", image_bytes("PNG", seed=77))
    assert api.post("/api/images/", {**data, "file": upload}, format="multipart").status_code == 201


@pytest.mark.parametrize("body_format", ["json", "multipart"])
def test_an_empty_optional_search_field_means_not_given(api, product, body_format):
    """A browser form sends every field; JSON clients get the same reading (no filter)."""
    fields = {"text": "dent", "product_code": "", "defect_code": "", "storage_url": ""}
    response = api.post("/api/search/similarity/", fields, format=body_format)
    assert response.status_code == 503 and response.json()["code"] == "no_index"  # past validation
    nothing = api.post("/api/search/similarity/", {"text": "", "storage_url": ""}, format=body_format)
    assert nothing.status_code == 400 and "exactly one" in nothing.json()["detail"]


def test_text_that_is_only_whitespace_is_refused_and_the_schema_says_so(spec, api):
    """DRF trims text before its not-blank check; the schema must not promise that "\\v" is valid."""
    field = spec["components"]["schemas"]["PatchedDefectTypeRequest"]["properties"]["defect_name_en"]
    assert field["pattern"] == r"\S"
    # A field with a pattern of its own keeps it.
    code = spec["components"]["schemas"]["ProductRequest"]["properties"]["product_code"]
    assert code["pattern"].startswith("^[A-Za-z0-9]")
    response = api.post(
        "/api/defect-types/",
        {"defect_code": "dent", "defect_name_ko": "찍힘", "defect_name_en": "\u000b"},
        format="json",
    )
    assert response.status_code == 400 and "defect_name_en" in response.json()["errors"]
