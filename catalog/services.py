"""Functions that write catalog data. Keyword-only, transactional; they raise ValidationError
or a project error, never HTTP objects."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext

from catalog.image_validation import ImageInfo, InvalidImage, inspect_image_bytes, thumbnail_jpeg
from catalog.models import DefectType, Image, ImageType, Product
from catalog.selectors import catalog_image_with_object, catalog_images_by_hash, image_names_referenced
from catalog.storage import read_stored, resolved_name
from simsearch_project.errors import Conflict, StorageUnavailable, safe_reason

logger = logging.getLogger(__name__)

# Longest side of the admin previews, in pixels (lists show them at 64, the change page at 320).
THUMBNAIL_SIDE = 320


@dataclass(frozen=True)
class UploadedImage:
    """Bytes of one uploaded file and the name the client gave it (used in messages only)."""

    name: str
    data: bytes


def image_inspect(*, data: bytes, query: bool = False) -> ImageInfo:
    """Validate upload bytes against the configured limits; ValidationError on `file` if bad.
    `query`: a photo to search or check with, not to keep (decoded at a small scale, see
    inspect_image_bytes)."""
    try:
        return inspect_image_bytes(
            data,
            max_bytes=settings.SIMSEARCH_MAX_UPLOAD_BYTES,
            max_pixels=settings.SIMSEARCH_MAX_IMAGE_PIXELS,
            max_aspect_ratio=settings.SIMSEARCH_MAX_ASPECT_RATIO,
            smallest_scale=query,
        )
    except InvalidImage as exc:
        # The validator is Django-free and speaks English; its message is translated here, at request time.
        raise ValidationError({"file": [ValidationError(gettext(exc.message) % exc.params, code=exc.code)]}) from None


def _check_labels(*, image_type: str, defect_type: DefectType | None) -> None:
    if image_type not in ImageType.values:
        raise ValidationError(
            {
                "image_type": [
                    gettext("Unknown image type “%(image_type)s”; use one of %(choices)s.")
                    % {"image_type": image_type, "choices": ", ".join(ImageType.values)}
                ]
            }
        )
    if image_type == ImageType.DEFECT and defect_type is None:
        raise ValidationError({"defect_type": [gettext("A defect image needs a defect type.")]})
    if image_type == ImageType.NORMAL and defect_type is not None:
        raise ValidationError({"defect_type": [gettext("A normal image must not have a defect type.")]})


def _store(*, image: Image, info: ImageInfo, data: bytes) -> None:
    """Write the image and its preview; on failure nothing of this image stays in storage."""
    preview = _thumbnail(data)
    try:
        # The name only carries the extension; upload_to generates the object key.
        image.file.save(f"upload.{info.extension}", ContentFile(data), save=False)
        if preview is not None:
            image.thumbnail.save("thumbnail.jpg", ContentFile(preview), save=False)
    except Exception as exc:  # storage backends raise OSError, botocore errors, ...
        logger.exception("Writing an image to storage failed")
        _discard_files(image=image)
        raise StorageUnavailable(
            gettext("The image could not be written to storage (%(reason)s).") % {"reason": safe_reason(exc)}
        ) from exc


def _thumbnail(data: bytes) -> bytes | None:
    try:
        return thumbnail_jpeg(data, max_side=THUMBNAIL_SIDE)
    except Exception as exc:  # Pillow raises many types on odd files
        # A preview is a convenience: an image Pillow decodes but cannot show is still catalogued.
        logger.warning("No thumbnail for an upload (%s: %s); the admin shows the file itself", type(exc).__name__, exc)
        return None


def _discard_files(*, image: Image) -> None:
    _delete_files_quietly(storage=image.file.storage, names=_stored_names(image))


def _stored_names(image: Image) -> list[str]:
    return [field.name for field in (image.file, image.thumbnail) if field]


def _build(
    *,
    info: ImageInfo,
    image_type: str,
    product: Product,
    defect_type: DefectType | None,
    preprocessing_config: dict | None,
    expires_at: datetime | None,
) -> Image:
    return Image(
        image_type=image_type,
        product=product,
        defect_type=defect_type,
        width=info.width,
        height=info.height,
        file_size=info.file_size,
        sha256=info.sha256,
        preprocessing_config=preprocessing_config or {},
        expires_at=expires_at,
    )


@dataclass(frozen=True)
class SkippedDuplicate:
    """An upload left out because its bytes already are a catalog image of the product."""

    name: str
    existing_image_id: int


@dataclass(frozen=True)
class BulkUploadResult:
    created: list[Image]
    skipped: list[SkippedDuplicate]


def images_create(
    *,
    uploads: Sequence[UploadedImage],
    image_type: str,
    product: Product,
    defect_type: DefectType | None = None,
    preprocessing_config: dict | None = None,
    expires_at: datetime | None = None,
) -> list[Image]:
    """Create one Image per upload, all or nothing: every file is validated before anything
    is written, and files already stored are removed again if a later step fails. A file with
    the same bytes as a catalog image of the product, or as another file of the upload, is a
    Conflict naming that image (temporary query images are exempt)."""
    return _images_create(
        uploads=uploads,
        image_type=image_type,
        product=product,
        defect_type=defect_type,
        preprocessing_config=preprocessing_config,
        expires_at=expires_at,
        skip_duplicates=False,
    ).created


def images_bulk_create(
    *,
    uploads: Sequence[UploadedImage],
    image_type: str,
    product: Product,
    defect_type: DefectType | None = None,
    preprocessing_config: dict | None = None,
) -> BulkUploadResult:
    """`images_create` for a batch of many photos: files whose bytes already are a catalog image
    of the product, or an earlier file of the batch, are skipped and reported instead of
    refusing the batch; the rest are created."""
    return _images_create(
        uploads=uploads,
        image_type=image_type,
        product=product,
        defect_type=defect_type,
        preprocessing_config=preprocessing_config,
        expires_at=None,
        skip_duplicates=True,
    )


def _duplicate(*, name: str, existing_image_id: int, product: Product) -> Conflict:
    return Conflict(
        gettext("%(name)s: the same picture (identical bytes) is already image %(id)s of product %(product)s.")
        % {"name": name, "id": existing_image_id, "product": product.product_code},
        code="duplicate_image",
        details={"existing_image_id": existing_image_id},
    )


def _images_create(
    *,
    uploads: Sequence[UploadedImage],
    image_type: str,
    product: Product,
    defect_type: DefectType | None,
    preprocessing_config: dict | None,
    expires_at: datetime | None,
    skip_duplicates: bool,
) -> BulkUploadResult:
    _check_labels(image_type=image_type, defect_type=defect_type)
    if not uploads:
        raise ValidationError({"file": [gettext("No file was uploaded.")]})
    infos: list[ImageInfo] = []
    problems: list[str] = []
    for upload in uploads:
        try:
            infos.append(image_inspect(data=upload.data))
        except ValidationError as exc:
            message = " ".join(exc.message_dict["file"])
            problems.append(f"{upload.name}: {message}" if len(uploads) > 1 else message)
    if problems:
        raise ValidationError({"file": problems})

    # One catalog row per picture and product: the same bytes twice would take two of a
    # search's top_k places. Query images are exempt (a line may send one photo many times).
    checks_duplicates = image_type != ImageType.QUERY_TEMP
    positions: list[int] = []  # the uploads to create, by position
    first_position: dict[str, int] = {}
    for position, info in enumerate(infos):
        if checks_duplicates and info.sha256 in first_position:
            if not skip_duplicates:
                earlier = uploads[first_position[info.sha256]].name
                raise Conflict(
                    gettext("%(name)s is the same picture (identical bytes) as %(earlier)s in this upload.")
                    % {"name": uploads[position].name, "earlier": earlier},
                    code="duplicate_image",
                )
            continue
        first_position[info.sha256] = position
        positions.append(position)
    known = catalog_images_by_hash(product=product, hashes=first_position) if checks_duplicates else {}
    if known and not skip_duplicates:
        position = next(p for p in positions if infos[p].sha256 in known)
        raise _duplicate(name=uploads[position].name, existing_image_id=known[infos[position].sha256], product=product)
    positions = [p for p in positions if infos[p].sha256 not in known]

    created: list[Image] = []
    late: dict[str, int] = {}
    if positions:
        images = [
            _build(
                info=infos[p],
                image_type=image_type,
                product=product,
                defect_type=defect_type,
                preprocessing_config=preprocessing_config,
                expires_at=expires_at,
            )
            for p in positions
        ]
        # All rows share their labels, so validating one checks the references and constraints.
        images[0].full_clean(exclude=["file"])
        stored: list[Image] = []
        try:
            for image, position in zip(images, positions, strict=True):
                _store(image=image, info=infos[position], data=uploads[position].data)
                stored.append(image)
            with transaction.atomic():
                if checks_duplicates:
                    # Uploads for one product check and save one at a time: the product row is the
                    # lock, and the check is repeated under it for what arrived meanwhile.
                    list(Product.objects.select_for_update().filter(pk=product.pk).values_list("pk", flat=True))
                    late = catalog_images_by_hash(product=product, hashes=[image.sha256 for image in images])
                    if late and not skip_duplicates:
                        image = next(image for image in images if image.sha256 in late)
                        position = positions[images.index(image)]
                        raise _duplicate(
                            name=uploads[position].name, existing_image_id=late[image.sha256], product=product
                        )
                for image in images:
                    if image.sha256 not in late:
                        image.save()
                        created.append(image)
        except Exception:
            for image in stored:
                _discard_files(image=image)
            raise
        for image in images:
            if image.sha256 in late:
                _discard_files(image=image)

    image_of = {**known, **late, **{image.sha256: image.pk for image in created}}
    created_hashes = {image.sha256 for image in created}
    skipped = [
        SkippedDuplicate(name=upload.name, existing_image_id=image_of[info.sha256])
        for position, (upload, info) in enumerate(zip(uploads, infos, strict=True))
        if checks_duplicates and not (info.sha256 in created_hashes and first_position[info.sha256] == position)
    ]
    return BulkUploadResult(created=created, skipped=skipped)


def image_create(
    *,
    data: bytes,
    image_type: str,
    product: Product,
    defect_type: DefectType | None = None,
    preprocessing_config: dict | None = None,
    expires_at: datetime | None = None,
    name: str = "upload",
) -> Image:
    """Validate, store and record one image."""
    (image,) = images_create(
        uploads=[UploadedImage(name=name, data=data)],
        image_type=image_type,
        product=product,
        defect_type=defect_type,
        preprocessing_config=preprocessing_config,
        expires_at=expires_at,
    )
    return image


def image_delete(*, image: Image) -> None:
    """Delete the row, then, once the deletion is committed, its stored file and preview unless
    another row still uses them (rows registered before query images were kept off catalog
    objects may share one). Every way of deleting an image (API, admin, purge) comes here."""
    storage, names = image.file.storage, _stored_names(image)
    with transaction.atomic():
        image.delete()
        transaction.on_commit(lambda: _delete_unreferenced(storage=storage, names=names))


def _delete_unreferenced(*, storage, names: list[str]) -> None:  # type: ignore[no-untyped-def]
    try:
        # A local name may open another row's object through a link: judge by both names.
        opens = {name: _resolved_or_none(name, storage=storage) for name in names}
        used = image_names_referenced(names=[*names, *(n for n in opens.values() if n)])
        still_used = {name for name in names if name in used or opens[name] in used or opens[name] is None}
    except Exception:
        # Not knowing is not a reason to delete: a leftover object costs only space.
        logger.exception("Could not check whether other images use %s; keeping them", ", ".join(names))
        return
    for name in sorted(still_used):
        logger.warning("Kept %s in storage: another image still uses it (see manage.py check_image_aliases)", name)
    _delete_files_quietly(storage=storage, names=[name for name in names if name not in still_used])


def _resolved_or_none(name: str, *, storage) -> str | None:  # type: ignore[no-untyped-def]
    """The object `name` opens; None where it leads out of the media folder (never deleted)."""
    try:
        return resolved_name(name, storage=storage)
    except FileNotFoundError:
        return None if os.path.lexists(storage.path(name)) else name


def _delete_files_quietly(*, storage, names: list[str]) -> None:  # type: ignore[no-untyped-def]
    for name in names:
        try:
            storage.delete(name)
        except Exception:
            # The row is gone (or was never written); a leftover object costs only space and is
            # logged for cleanup.
            logger.exception("Could not delete %s from storage", name)


def temp_image_register(
    *,
    storage_key: str,
    product: Product,
    defect_type: DefectType | None,
    ttl_seconds: int,
    registered_by: AbstractBaseUser | None = None,
) -> Image:
    """Record an object a line worker already put in storage as a temporary query image.
    It is never indexed and is deleted (row and object) once it expires, so keys the server
    manages or a catalog image uses are refused (ValidationError on storage_url)."""
    _refuse_server_object(storage_key)
    info = image_inspect(data=read_stored(storage_key))
    image = _build(
        info=info,
        image_type=ImageType.QUERY_TEMP,
        product=product,
        defect_type=defect_type,
        preprocessing_config={"registered_by": "worker"},
        expires_at=timezone.now() + timedelta(seconds=ttl_seconds),
    )
    image.file.name = storage_key
    image.registered_by = registered_by  # who may see it over the API besides catalog viewers
    image.full_clean(exclude=["file"])
    image.save()
    return image


def _server_managed_prefixes() -> tuple[str, ...]:
    return (
        "images",
        "thumbnails",
        settings.SIMSEARCH_INDEX_PREFIX.strip("/"),
        settings.SIMSEARCH_RESULT_PREFIX.strip("/"),
    )


def _refuse_server_object(key: str) -> None:
    """A query image's object is deleted when the query image expires, so it must be the line's
    own upload: never a catalog file or preview (or anything else the server writes), whose
    links any signed-in user gets from search results. Judged by the key and by the object the
    key really opens (a link in a local media folder can lead from a line's folder to a catalog
    file)."""
    try:
        names = {key, resolved_name(key)}
    except FileNotFoundError:
        names = {key}  # nothing there (or outside the folder): reading it answers 404 next
    for name in sorted(names):
        _refuse_server_name(name)


def _refuse_server_name(key: str) -> None:
    for prefix in _server_managed_prefixes():
        if key == prefix or key.startswith(f"{prefix}/"):
            raise ValidationError(
                {
                    "storage_url": [
                        gettext(
                            "Objects under %(prefix)s/ are managed by the server (catalog images, previews, index "
                            "files) and cannot be registered as a temporary query image; upload the photo to a key "
                            "of its own (for example line-uploads/<camera>/<frame>.jpg) and register that."
                        )
                        % {"prefix": prefix}
                    ]
                }
            )
    existing = catalog_image_with_object(name=key)
    if existing is not None:
        raise ValidationError(
            {
                "storage_url": [
                    gettext(
                        "This object belongs to catalog image %(id)s and cannot be registered as a temporary query "
                        "image; search with image_id instead, or upload the photo to a key of its own."
                    )
                    % {"id": existing}
                ]
            }
        )


def temp_images_purge(*, now: datetime | None = None) -> int:
    """Delete expired temporary query images, rows and stored objects."""
    expired = Image.objects.filter(image_type=ImageType.QUERY_TEMP, expires_at__lte=now or timezone.now())
    count = 0
    for image in expired.iterator():
        image_delete(image=image)
        count += 1
    if count:
        logger.info("Purged %s expired temporary images", count)
    return count
