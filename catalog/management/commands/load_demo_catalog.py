from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from catalog.demo_images import DEFECT_KINDS, PART_SHAPES, draw_part_photo
from catalog.models import DefectType, Image, ImageType, Product
from catalog.services import UploadedImage, images_create

PRODUCTS = {
    "plate": ("bracket-a", "브래킷 A (Bracket A)"),
    "gear": ("gear-b", "기어 B (Gear B)"),
    "housing": ("housing-c", "하우징 C (Housing C)"),
}
DEFECTS = {
    "scratch": ("긁힘", "Scratch"),
    "dent": ("찍힘", "Dent"),
    "stain": ("얼룩", "Stain"),
    "crack": ("균열", "Crack"),
}


class Command(BaseCommand):
    help = "Load a demo catalog of procedurally drawn part photos (normal and defective) into storage."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--normal-per-product", type=int, default=30)
        parser.add_argument("--defects-per-kind", type=int, default=15, help="defect images per product and defect")

    def handle(self, *args: Any, normal_per_product: int, defects_per_kind: int, **options: Any) -> None:
        codes = [code for code, _ in PRODUCTS.values()]
        if Image.objects.filter(product__product_code__in=codes).exists():
            self.stdout.write("Demo catalog already loaded; nothing to do.")
            return
        with transaction.atomic():
            products = {
                shape: Product.objects.get_or_create(
                    product_code=code, defaults={"product_name": name, "description": "Demo product"}
                )[0]
                for shape, (code, name) in PRODUCTS.items()
            }
            defect_types = {
                code: DefectType.objects.get_or_create(
                    defect_code=code, defaults={"defect_name_ko": ko, "defect_name_en": en}
                )[0]
                for code, (ko, en) in DEFECTS.items()
            }
        seed, total = 0, 0
        for shape in PART_SHAPES:
            batches: list[tuple[DefectType | None, int]] = [(None, normal_per_product)]
            batches += [(defect_types[kind], defects_per_kind) for kind in DEFECT_KINDS]
            for defect_type, count in batches:
                uploads = []
                for _ in range(count):
                    seed += 1
                    kind = defect_type.defect_code if defect_type else None
                    uploads.append(
                        UploadedImage(f"demo-{seed}.jpg", draw_part_photo(shape=shape, defect=kind, seed=seed))
                    )
                images_create(
                    uploads=uploads,
                    image_type=ImageType.DEFECT if defect_type else ImageType.NORMAL,
                    product=products[shape],
                    defect_type=defect_type,
                )
                total += count
            self.stdout.write(f"  {products[shape].product_code}: images stored")
        self.stdout.write(self.style.SUCCESS(f"Loaded {total} demo images for {len(products)} products."))
