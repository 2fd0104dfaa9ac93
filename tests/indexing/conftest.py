from __future__ import annotations

import pytest

from catalog.models import Image, ImageType
from catalog.services import image_create
from indexing.models import IndexBuild
from indexing.services import index_build_request, index_build_run
from tests.helpers import image_bytes


def add_images(product, defect_type, count: int, start: int = 0, image_type: str = ImageType.DEFECT) -> list[Image]:  # type: ignore[no-untyped-def]
    return [
        image_create(data=image_bytes(seed=seed), image_type=image_type, product=product, defect_type=defect_type)
        for seed in range(start, start + count)
    ]


def build_now(index_type: str = "defect", **kwargs) -> IndexBuild:  # type: ignore[no-untyped-def]
    """Request a build and run it in this process (the queue is tested separately)."""
    (build,) = index_build_request(index_type=index_type, **kwargs)
    return index_build_run(build_id=build.pk)


@pytest.fixture
def gallery(product, scratch) -> list[Image]:  # type: ignore[no-untyped-def]
    return add_images(product, scratch, 6)
