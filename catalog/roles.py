"""The plant's roles as Django groups (README, "Who may do what"). Searching needs no role: any
signed-in user may search and read the catalog."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import Group, Permission
from django.db import transaction
from django.utils.translation import gettext

from simsearch_project.errors import ServiceError
from simsearch_project.permissions import (
    ACTIVATE_INDEX_BUILD,
    REBUILD_INDEX,
    REGISTER_QUERY_IMAGE,
    VIEW_INDEX_BUILD,
)

LINE_PC = "Line PC"
CATALOG_EDITOR = "Catalog editor"
INDEX_OPERATOR = "Index operator"

ROLES: dict[str, tuple[str, ...]] = {
    LINE_PC: (REGISTER_QUERY_IMAGE,),
    CATALOG_EDITOR: tuple(
        f"catalog.{action}_{model}"
        for model in ("product", "defecttype", "image")
        for action in ("add", "change", "delete", "view")
    ),
    INDEX_OPERATOR: (VIEW_INDEX_BUILD, REBUILD_INDEX, ACTIVATE_INDEX_BUILD),
}


@dataclass(frozen=True)
class RoleOutcome:
    name: str
    created: bool
    added: tuple[str, ...]  # permissions this run gave the group
    extra: tuple[str, ...]  # permissions the group has beyond its role (given by hand; kept)


def _permission(name: str) -> Permission:
    app_label, codename = name.split(".", 1)
    permission = Permission.objects.filter(content_type__app_label=app_label, codename=codename).first()
    if permission is None:
        raise ServiceError(
            gettext("The permission %(name)s does not exist yet: run `manage.py migrate` first.") % {"name": name}
        )
    return permission


def _name(permission: Permission) -> str:
    return f"{permission.content_type.app_label}.{permission.codename}"


@transaction.atomic
def roles_ensure() -> list[RoleOutcome]:
    """Create each role's group and give it the role's permissions. Idempotent: a second run
    changes nothing; permissions given to a group by hand are left in place and reported."""
    outcomes = []
    for role, names in ROLES.items():
        wanted = [_permission(name) for name in names]
        group, created = Group.objects.get_or_create(name=role)
        has = {p.pk for p in group.permissions.all()}
        missing = [p for p in wanted if p.pk not in has]
        group.permissions.add(*missing)
        wanted_ids = {p.pk for p in wanted}
        extra = group.permissions.exclude(pk__in=wanted_ids).select_related("content_type")
        outcomes.append(
            RoleOutcome(
                name=role,
                created=created,
                added=tuple(_name(p) for p in missing),
                extra=tuple(sorted(_name(p) for p in extra)),
            )
        )
    return outcomes
