from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from catalog.models import Image, ImageType

FACTS = {"width": 1, "height": 1, "file_size": 1, "sha256": "0" * 64, "file": "images/x.png"}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("image_type", "with_defect"),
    [(ImageType.DEFECT, False), (ImageType.NORMAL, True), ("bogus", False)],
)
def test_database_enforces_the_defect_normal_rule(product, scratch, image_type: str, with_defect: bool) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        Image.objects.create(
            image_type=image_type, product=product, defect_type=scratch if with_defect else None, **FACTS
        )
    assert not Image.objects.exists()


@pytest.mark.django_db
def test_valid_label_combinations_are_stored(product, scratch) -> None:
    Image.objects.create(image_type=ImageType.DEFECT, product=product, defect_type=scratch, **FACTS)
    Image.objects.create(image_type=ImageType.NORMAL, product=product, **FACTS)
    Image.objects.create(image_type=ImageType.QUERY_TEMP, product=product, defect_type=scratch, **FACTS)
    assert Image.objects.count() == 3
