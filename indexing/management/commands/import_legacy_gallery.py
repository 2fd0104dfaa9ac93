from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from catalog.models import DefectType, Image, ImageType, Product
from catalog.services import image_create
from indexing.legacy import scan_legacy_folder
from simsearch_project.errors import ServiceError


class Command(BaseCommand):
    help = (
        "Import a legacy (V1) gallery folder, files named <product>_<defect>_<anything>.<ext>, into the "
        "catalog: missing products and defect types are created, files are uploaded to storage, "
        "duplicates (same content) are skipped."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("folder", type=Path)
        parser.add_argument("--dry-run", action="store_true", help="report what would happen, change nothing")

    def handle(self, *args: Any, folder: Path, dry_run: bool, **options: Any) -> None:
        try:
            files, rejected = scan_legacy_folder(folder)
        except FileNotFoundError as exc:
            raise CommandError(str(exc)) from exc
        imported = skipped = 0
        created_products: set[str] = set()
        created_defects: set[str] = set()
        for legacy in files:
            data = legacy.path.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            if Image.objects.filter(sha256=sha, image_type=legacy.image_type).exists():
                skipped += 1
                continue
            if dry_run:
                imported += 1
                continue
            try:
                # Per file: a rejected file leaves no product or defect type behind either.
                with transaction.atomic():
                    product, new_product = Product.objects.get_or_create(
                        product_code=legacy.product,
                        defaults={"product_name": legacy.product, "description": "Imported (V1)"},
                    )
                    defect_type, new_defect = None, False
                    if legacy.image_type == ImageType.DEFECT:
                        defect_type, new_defect = DefectType.objects.get_or_create(
                            defect_code=legacy.defect,
                            defaults={"defect_name_ko": legacy.defect, "defect_name_en": legacy.defect},
                        )
                    image_create(
                        data=data,
                        image_type=legacy.image_type,
                        product=product,
                        defect_type=defect_type,
                        preprocessing_config={"imported_from": str(legacy.path.relative_to(folder))},
                        name=legacy.path.name,
                    )
            except (ValidationError, ServiceError) as exc:
                message = "; ".join(exc.messages) if isinstance(exc, ValidationError) else exc.message
                rejected.append((str(legacy.path.relative_to(folder)), message))
                continue
            if new_product:
                created_products.add(legacy.product)
            if new_defect:
                created_defects.add(legacy.defect)
            imported += 1
        verb = "Would import" if dry_run else "Imported"
        self.stdout.write(
            self.style.SUCCESS(
                f"{verb} {imported} images, skipped {skipped} duplicates, rejected {len(rejected)} files."
            )
        )
        if created_products or created_defects:
            self.stdout.write(
                f"Created products: {', '.join(sorted(created_products)) or '-'}; "
                f"defect types: {', '.join(sorted(created_defects)) or '-'} (names = codes; edit them in the admin)."
            )
        for name, reason in rejected:
            self.stdout.write(f"  rejected {name}: {reason}")
