from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from indexing.services import builds_prune


class Command(BaseCommand):
    help = (
        "Remove old ready index builds (database rows and stored files), keeping the active build "
        "and the --keep most recently active others per image type and engine. Runs after every "
        "successful build too."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--keep",
            type=int,
            default=None,
            help="ready builds to keep besides the active one (default: SIMSEARCH_KEEP_BUILDS)",
        )

    def handle(self, *args: Any, keep: int | None, **options: Any) -> None:
        keep = settings.SIMSEARCH_KEEP_BUILDS if keep is None else keep
        if keep < 0:
            raise CommandError("--keep must be 0 or more.")
        removed = builds_prune(keep=keep)
        if removed:
            self.stdout.write(f"Removed {len(removed)} old builds: {', '.join(map(str, removed))}.")
        else:
            self.stdout.write(f"Nothing to remove: no type has more than {keep} ready builds besides the active one.")
