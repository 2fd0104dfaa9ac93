from __future__ import annotations

from dataclasses import dataclass

import pytest

from catalog.models import DefectType, Image, ImageType, Product
from catalog.services import image_create
from indexing.models import IndexBuild
from tests.helpers import image_bytes
from tests.indexing.conftest import build_now


@dataclass
class Gallery:
    images: dict[int, bytes]  # image id -> the bytes uploaded
    by_key: dict[tuple[str, str | None], list[Image]]
    defect_build: IndexBuild
    normal_build: IndexBuild


@pytest.fixture
def indexed_gallery(product) -> Gallery:  # type: ignore[no-untyped-def]
    """Two products, two defect types and normal images, with both indexes built and active."""
    gear = Product.objects.create(product_code="gear-b", product_name="기어 B")
    scratch = DefectType.objects.create(defect_code="scratch", defect_name_ko="긁힘", defect_name_en="Scratch")
    dent = DefectType.objects.create(defect_code="dent", defect_name_ko="찍힘", defect_name_en="Dent")
    images: dict[int, bytes] = {}
    by_key: dict[tuple[str, str | None], list[Image]] = {}
    seed = 0
    for prod in (product, gear):
        for defect in (scratch, dent, None):
            for _ in range(4):
                seed += 1
                data = image_bytes(seed=seed, size=(72, 72))
                image = image_create(
                    data=data,
                    image_type=ImageType.DEFECT if defect else ImageType.NORMAL,
                    product=prod,
                    defect_type=defect,
                )
                images[image.pk] = data
                by_key.setdefault((prod.product_code, defect.defect_code if defect else None), []).append(image)
    defect_build, normal_build = build_now("defect"), build_now("normal")
    assert defect_build.status == normal_build.status == "ready"
    return Gallery(images, by_key, defect_build, normal_build)
