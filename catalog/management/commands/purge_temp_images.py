from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from catalog.services import temp_images_purge


class Command(BaseCommand):
    help = "Delete expired temporary query images (database rows and stored objects) now."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(f"Deleted {temp_images_purge()} expired temporary images.")
