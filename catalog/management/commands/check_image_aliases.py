from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from catalog.selectors import image_aliases


class Command(BaseCommand):
    help = (
        "Report stored objects that more than one image row uses as its file or preview (for example a "
        "temporary query image registered on a catalog image's key before that was refused). Deleting one "
        "such row keeps the object while another row uses it. Exits non-zero when any are found."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        aliases = image_aliases()
        for alias in aliases:
            self.stdout.write(f"{alias.name}: images {', '.join(map(str, alias.image_ids))}")
        if aliases:
            raise CommandError(f"{len(aliases)} stored object(s) are used by more than one image row.")
        self.stdout.write(self.style.SUCCESS("No stored object is used by more than one image row."))
