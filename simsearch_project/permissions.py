"""Who may do what: the permission names the API and the admin check, and the DRF classes that
check them. Reads of the catalog stay open to any signed-in user; every write and every
index-control endpoint needs a Django permission (a superuser has them all).

Kept free of `rest_framework.views` (see `drf_defaults`): the admin imports the names from here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rest_framework.permissions import BasePermission, DjangoModelPermissions

if TYPE_CHECKING:
    from rest_framework.request import Request

# Custom permissions (declared in the models' Meta.permissions).
REBUILD_INDEX = "indexing.rebuild_index"
ACTIVATE_INDEX_BUILD = "indexing.activate_indexbuild"
VIEW_INDEX_BUILD = "indexing.view_indexbuild"
REGISTER_QUERY_IMAGE = "catalog.register_query_image"
# Sees every catalog image, other clients' temporary query images included.
VIEW_IMAGE = "catalog.view_image"


class CatalogModelPermissions(DjangoModelPermissions):
    """Any signed-in user reads; POST needs `add_<model>`, PUT/PATCH `change_<model>`, DELETE
    `delete_<model>` on the view's model."""


class _HasPermissions(BasePermission):
    required: tuple[str, ...] = ()

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.has_perms(self.required))


class CanRebuildIndex(_HasPermissions):
    required = (REBUILD_INDEX,)


class CanActivateIndexBuild(_HasPermissions):
    required = (ACTIVATE_INDEX_BUILD,)


class CanViewIndexBuilds(_HasPermissions):
    required = (VIEW_INDEX_BUILD,)


class CanRegisterQueryImage(_HasPermissions):
    required = (REGISTER_QUERY_IMAGE,)
