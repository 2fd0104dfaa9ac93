"""Functions that read catalog data."""

from __future__ import annotations

from django.db.models import QuerySet

from catalog.models import DefectType, Image, Product


def image_list() -> QuerySet[Image]:
    """Images with their product and defect type joined in (no per-row queries)."""
    return Image.objects.select_related("product", "defect_type")


def product_get_by_code(*, product_code: str) -> Product | None:
    return Product.objects.filter(product_code=product_code).first()


def defect_type_get_by_code(*, defect_code: str) -> DefectType | None:
    return DefectType.objects.filter(defect_code=defect_code).first()
