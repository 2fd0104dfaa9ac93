from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from catalog.roles import roles_ensure
from simsearch_project.errors import ServiceError


class Command(BaseCommand):
    help = (
        "Create the plant's roles as groups (Line PC, Catalog editor, Index operator) with their "
        "permissions. Safe to run again: it only adds what is missing."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            outcomes = roles_ensure()
        except ServiceError as exc:
            raise CommandError(exc.message) from exc
        for outcome in outcomes:
            state = "created" if outcome.created else "exists"
            added = ", ".join(outcome.added) if outcome.added else "nothing (already complete)"
            self.stdout.write(f"Group {outcome.name!r}: {state}; permissions added: {added}")
            if outcome.extra:
                self.stdout.write(f"  also has (given by hand, kept): {', '.join(outcome.extra)}")
        self.stdout.write(
            "Add users to these groups in the admin (Authentication and Authorization → Users). "
            "Admin pages also need the user's 'Staff status'."
        )
