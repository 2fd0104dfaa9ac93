"""Search results never hold the same picture (content hash) twice, and still fill top_k with
distinct pictures (issue 8, item 3)."""

from __future__ import annotations

import pytest

from catalog.models import DefectType, ImageType, Product
from catalog.services import image_create
from search_api.index_cache import index_cache
from tests.helpers import image_bytes
from tests.indexing.conftest import build_now

pytestmark = pytest.mark.django_db


def test_identical_bytes_for_two_products_come_back_once(staff_api, product):
    scratch = DefectType.objects.create(defect_code="scratch", defect_name_ko="긁힘", defect_name_en="Scratch")
    other = Product.objects.create(product_code="gear-b", product_name="기어 B")
    twin_bytes = image_bytes(seed=1, size=(72, 72))
    twins = [
        image_create(data=twin_bytes, image_type=ImageType.DEFECT, product=owner, defect_type=scratch)
        for owner in (product, other)
    ]
    others = [
        image_create(
            data=image_bytes(seed=seed, size=(72, 72)),
            image_type=ImageType.DEFECT,
            product=product,
            defect_type=scratch,
        )
        for seed in range(2, 6)
    ]
    build = build_now()
    assert build.vector_count == 6, build.error
    index_cache.reset()
    assert index_cache.get(engine="v2", image_type="defect").duplicate_vectors == 1

    twin_ids = {twin.pk for twin in twins}
    for top_k in (1, 3, 5):
        response = staff_api.post("/api/search/similarity/", {"image_id": twins[0].pk, "top_k": top_k}, format="json")
        assert response.status_code == 200, response.content
        returned = [r["image_id"] for r in response.json()["results"]]
        assert len(returned) == top_k and len(set(returned) & twin_ids) == 1, returned
        assert returned[0] in twin_ids and response.json()["results"][0]["similarity_score"] == pytest.approx(1.0)
    everything = staff_api.post("/api/search/similarity/", {"image_id": twins[0].pk, "top_k": 100}, format="json")
    returned = [r["image_id"] for r in everything.json()["results"]]
    assert len(returned) == 5 and set(returned) - twin_ids == {o.pk for o in others}

    # Within one product's filter the twin of that product answers.
    filtered = staff_api.post(
        "/api/search/similarity/", {"image_id": twins[0].pk, "top_k": 2, "product_code": "gear-b"}, format="json"
    )
    assert [r["image_id"] for r in filtered.json()["results"]] == [twins[1].pk]


def test_identical_legacy_files_under_two_names_are_one_picture_in_a_v1_answer(settings, tmp_path, staff_api):
    folder = tmp_path / "legacy"
    folder.mkdir()
    twin = image_bytes(seed=1, size=(72, 72))
    (folder / "prod1_dent_1.png").write_bytes(twin)
    (folder / "prod1_scratch_2.png").write_bytes(twin)
    for seed in range(2, 5):
        (folder / f"prod1_dent_{seed + 10}.png").write_bytes(image_bytes(seed=seed, size=(72, 72)))
    settings.USE_INDEX_V2 = False
    settings.INDEX_DIR_V1 = str(folder)
    assert build_now(engine="v1").vector_count == 5
    response = staff_api.post("/api/search/similarity/", {"text": "part", "top_k": 10}, format="json")
    names = [r["image_path"].rsplit("/", 1)[-1] for r in response.json()["results"]]
    assert len(names) == 4 and len({"prod1_dent_1.png", "prod1_scratch_2.png"} & set(names)) == 1, names
