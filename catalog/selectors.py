"""Functions that read catalog data."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.db.models import Count, Q, QuerySet

from catalog.models import DefectType, Image, ImageType, Product

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser


def image_list() -> QuerySet[Image]:
    """Images with their product and defect type joined in (no per-row queries)."""
    return Image.objects.select_related("product", "defect_type")


def image_list_visible_to(*, user: AbstractBaseUser | AnonymousUser) -> QuerySet[Image]:
    """The images `user` may see: everything with catalog.view_image; otherwise the catalog
    (normal and defect images) and the temporary query images this user registered."""
    if user.has_perm("catalog.view_image"):
        return image_list()
    return image_list().filter(~Q(image_type=ImageType.QUERY_TEMP) | Q(registered_by_id=user.pk))


def product_get_by_code(*, product_code: str) -> Product | None:
    return Product.objects.filter(product_code=product_code).first()


def defect_type_get_by_code(*, defect_code: str) -> DefectType | None:
    return DefectType.objects.filter(defect_code=defect_code).first()


def catalog_images_by_hash(*, product: Product, hashes: Collection[str]) -> dict[str, int]:
    """sha256 -> id of the oldest catalog image (normal or defect) of `product` with those bytes.
    Temporary query images do not count: a line may send the same photo as often as it likes."""
    found: dict[str, int] = {}
    rows = (
        Image.objects.filter(product=product, sha256__in=set(hashes))
        .exclude(image_type=ImageType.QUERY_TEMP)
        .order_by("id")
        .values_list("sha256", "id")
    )
    for sha256, image_id in rows:
        found.setdefault(sha256, image_id)
    return found


def catalog_image_with_object(*, name: str) -> int | None:
    """Id of a catalog image (not a temporary query image) whose file or preview is `name`."""
    return (
        Image.objects.filter(Q(file=name) | Q(thumbnail=name))
        .exclude(image_type=ImageType.QUERY_TEMP)
        .values_list("id", flat=True)
        .first()
    )


def image_names_referenced(*, names: Collection[str]) -> set[str]:
    """Which of these storage names some Image row still uses, as its file or its preview."""
    names = {name for name in names if name}
    if not names:
        return set()
    rows = Image.objects.filter(Q(file__in=names) | Q(thumbnail__in=names)).values_list("file", "thumbnail")
    return {name for row in rows for name in row if name in names}


@dataclass(frozen=True)
class ImageAlias:
    """A stored object that more than one Image row points at (as file or preview)."""

    name: str
    image_ids: tuple[int, ...]


def image_aliases() -> list[ImageAlias]:
    """Every storage name used by two or more rows, one of them a catalog image, with those rows'
    ids. Such rows predate the rule that a query image never shares an object with a catalog
    image. (A line may register its own upload twice: query images sharing an object are fine,
    since a delete keeps an object another row still uses.)"""
    shared_files = (
        Image.objects.order_by().values("file").annotate(rows=Count("id")).filter(rows__gt=1).values_list("file")
    )
    shared_previews = (
        Image.objects.exclude(thumbnail="")
        .order_by()
        .values("thumbnail")
        .annotate(rows=Count("id"))
        .filter(rows__gt=1)
        .values_list("thumbnail")
    )
    previews = Image.objects.exclude(thumbnail="").values_list("thumbnail", flat=True)
    candidates = {name for (name,) in shared_files} | {name for (name,) in shared_previews}
    candidates |= set(Image.objects.filter(file__in=previews).values_list("file", flat=True))
    users: dict[str, set[int]] = {name: set() for name in candidates}
    catalog_names: set[str] = set()
    rows = Image.objects.filter(Q(file__in=candidates) | Q(thumbnail__in=candidates)).values_list(
        "id", "file", "thumbnail", "image_type"
    )
    for image_id, file_name, preview, image_type in rows:
        for name in (file_name, preview):
            if name in users:
                users[name].add(image_id)
                if image_type != ImageType.QUERY_TEMP:
                    catalog_names.add(name)
    return [
        ImageAlias(name, tuple(sorted(ids)))
        for name, ids in sorted(users.items())
        if len(ids) > 1 and name in catalog_names
    ]


def images_by_id(*, ids: Collection[int]) -> dict[int, Image]:
    """id -> Image (file and preview only), in one query."""
    return {image.pk: image for image in Image.objects.filter(pk__in=list(ids)).only("id", "file", "thumbnail")}
