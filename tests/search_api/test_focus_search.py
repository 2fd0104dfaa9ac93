"""Defect-focused search (issue 11): the defect build describes each defect image by its most
anomalous patches against its product's anomaly model, and a query photo is described the same
way; whole-image search stays available and is the fallback, and the answer says which answered."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image as PILImage
from PIL import ImageDraw

from catalog.models import DefectType, ImageType, Product
from catalog.services import image_create
from indexing.focus import FocusDescriptors
from search_api.index_cache import index_cache
from tests.helpers import surface_photo
from tests.indexing.conftest import build_now

pytestmark = pytest.mark.django_db

SEARCH = "/api/search/similarity/"


def marked_photo(seed: int, kind: str, *, at: tuple[int, int] | None = None) -> bytes:
    """A normal surface (tests.helpers.surface_photo) with a dark disc ("dent") or a thin bright
    slanted line ("scratch") somewhere on it."""
    rng = np.random.default_rng(seed)
    img = PILImage.open(io.BytesIO(surface_photo(seed))).convert("RGB")
    x, y = at or (int(rng.integers(30, 130)), int(rng.integers(30, 98)))
    draw = ImageDraw.Draw(img)
    if kind == "dent":
        draw.ellipse((x - 11, y - 11, x + 11, y + 11), fill=(35, 35, 35))
    else:
        draw.line((x - 14, y - 10, x + 14, y + 10), fill=(250, 250, 250), width=3)
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def focus_catalog(product):  # type: ignore[no-untyped-def]
    """bracket-a: 6 normal surfaces, 4 dents and 4 scratches; gear-b: 3 normals (too few for an
    anomaly model) and 2 dents. Normal index first, then the defect index."""
    dent = DefectType.objects.create(defect_code="dent", defect_name_ko="찍힘", defect_name_en="Dent")
    scratch = DefectType.objects.create(defect_code="scratch", defect_name_ko="스크래치", defect_name_en="Scratch")
    gear = Product.objects.create(product_code="gear-b", product_name="기어 B")
    for seed in range(6):
        image_create(data=surface_photo(seed), image_type=ImageType.NORMAL, product=product)
    for seed in range(3):
        image_create(data=surface_photo(200 + seed), image_type=ImageType.NORMAL, product=gear)
    defects = {}
    for i in range(4):
        for kind, defect_type in (("dent", dent), ("scratch", scratch)):
            image = image_create(
                data=marked_photo(100 + i, kind), image_type=ImageType.DEFECT, product=product, defect_type=defect_type
            )
            defects.setdefault(kind, []).append(image)
    for i in range(2):
        image_create(data=marked_photo(300 + i, "dent"), image_type=ImageType.DEFECT, product=gear, defect_type=dent)
    assert build_now("normal").status == "ready"
    build = build_now("defect")
    assert build.status == "ready", build.error
    index_cache.reset()
    return build, defects


def search(client, photo: bytes, **fields):  # type: ignore[no-untyped-def]
    response = client.post(
        SEARCH, {"image": SimpleUploadedFile("q.png", photo), "top_k": 3, **fields}, format="multipart"
    )
    assert response.status_code == 200, response.content
    return response.json()


def test_the_defect_build_describes_the_defect_images_of_products_with_an_anomaly_model(focus_catalog):
    build, defects = focus_catalog
    loaded = index_cache.get(engine="v2", image_type="defect")
    focus = loaded.manifest["focus"]
    assert focus["products"] == ["bracket-a"] and focus["count"] == 8 and "focus_s" in loaded.manifest["timings"]
    descriptors = index_cache.focus_descriptors(loaded)
    assert isinstance(descriptors, FocusDescriptors)
    assert set(descriptors.ids.tolist()) == {image.pk for images in defects.values() for image in images}
    # The anomaly model the descriptors were made with travels with the defect build.
    entry = loaded.manifest["anomaly_models"]["bracket-a"]
    assert loaded.manifest["files"][entry["file"]]["sha256"] == entry["sha256"]
    assert entry["copied_from_build"] == focus["normal_build_id"]
    # The build's quality figures: defect-region search beside whole-photo search, same 8 images.
    build.refresh_from_db()
    figures = build.quality["focus"]
    assert figures["images"] == 8
    region = figures["region"]["labels"]["defect_type"]["top1_accuracy"]["value"]
    whole = figures["whole"]["labels"]["defect_type"]["top1_accuracy"]["value"]
    assert region == 1.0 and figures["region"]["labels"]["defect_type"]["queries"] == 8
    assert whole is not None and figures["whole"]["labels"]["defect_type"]["queries"] == 8


def test_a_photo_is_answered_by_its_defect_region_and_finds_its_defect_type(focus_catalog, plain_api):
    for kind in ("dent", "scratch"):
        body = search(plain_api, marked_photo(900, kind, at=(110, 40)))
        assert body["focus"]["mode"] == "defect" and body["focus"]["reason"] == ""
        # No product given: the best whole-image match's product is used, and said so.
        assert body["focus"]["product_code"] == "bracket-a" and body["focus"]["product_from"] == "best_match"
        assert [hit["defect_code"] for hit in body["results"][:3]] == [kind] * 3, body["results"]
        region = body["focus"]["region"]  # the mark is at (110, 40) of a 160 x 128 photo
        assert region["left"] <= 110 / 160 <= region["right"] and region["top"] <= 40 / 128 <= region["bottom"]
        assert region["right"] - region["left"] < 0.5 and region["bottom"] - region["top"] < 0.5


def test_whole_image_search_stays_available_and_is_the_fallback(focus_catalog, plain_api):
    photo = marked_photo(901, "dent")
    whole = search(plain_api, photo, focus="whole")
    assert whole["focus"] == {
        "mode": "whole",
        "reason": "",
        "product_code": None,
        "product_from": None,
        "region": None,
    }
    given = search(plain_api, photo, product_code="bracket-a")
    assert given["focus"]["mode"] == "defect" and given["focus"]["product_from"] == "request"
    # gear-b has too few normal images for an anomaly model: whole-image answers, and says why.
    gear = search(plain_api, photo, product_code="gear-b", focus="defect")
    assert gear["focus"]["mode"] == "whole" and "gear-b" in gear["focus"]["reason"]
    assert {hit["product_code"] for hit in gear["results"]} == {"gear-b"}
    text = plain_api.post(SEARCH, {"text": "a dent"}, format="json").json()
    assert text["focus"]["mode"] == "whole" and text["focus"]["reason"]
    normal = search(plain_api, photo, image_type="normal")
    assert normal["focus"] is None
    bad = plain_api.post(SEARCH, {"text": "a dent", "focus": "region"}, format="json")
    assert bad.status_code == 400 and "focus" in bad.json()["errors"]


def test_a_defect_build_made_before_the_normal_index_searches_whole_images(product, plain_api):
    dent = DefectType.objects.create(defect_code="dent", defect_name_ko="찍힘", defect_name_en="Dent")
    image_create(data=marked_photo(1, "dent"), image_type=ImageType.DEFECT, product=product, defect_type=dent)
    assert build_now("defect").status == "ready"
    index_cache.reset()
    body = search(plain_api, marked_photo(2, "dent"))
    assert body["focus"]["mode"] == "whole" and "normal index" in body["focus"]["reason"]
    assert len(body["results"]) == 1


def test_the_console_shows_which_search_answered_and_where_the_region_was_found(focus_catalog, client, staff_user):
    client.force_login(staff_user)
    staff_client = client
    response = staff_client.post(
        "/admin/search/",
        {
            "mode": "search",
            "photo": SimpleUploadedFile("q.png", marked_photo(902, "dent", at=(110, 40))),
            "image_type": "defect",
            "top_k": 3,
        },
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-focus-mode="defect"' in html and "bracket-a" in html
    focus = response.context["answers"][0]["result"].focus
    box = focus.region_percent
    assert box["left"] <= 69 <= box["left"] + box["width"] and box["top"] <= 31 <= box["top"] + box["height"]
    assert f"left: {box['left']}%; top: {box['top']}%" in html
    whole = staff_client.post(
        "/admin/search/",
        {
            "mode": "search",
            "photo": SimpleUploadedFile("q.png", marked_photo(903, "dent")),
            "image_type": "defect",
            "top_k": 3,
            "focus": "whole",
        },
    )
    assert 'data-focus-mode="whole"' in whole.content.decode()
