"""Functions that write catalog data. Keyword-only, transactional; they raise ValidationError
or a project error, never HTTP objects."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.db import transaction
from django.utils import timezone

from catalog.image_validation import ImageInfo, InvalidImage, inspect_image_bytes, thumbnail_jpeg
from catalog.models import DefectType, Image, ImageType, Product
from catalog.storage import read_stored
from simsearch_project.errors import StorageUnavailable

logger = logging.getLogger(__name__)

# Longest side of the admin previews, in pixels (lists show them at 64, the change page at 320).
THUMBNAIL_SIDE = 320


@dataclass(frozen=True)
class UploadedImage:
    """Bytes of one uploaded file and the name the client gave it (used in messages only)."""

    name: str
    data: bytes


def image_inspect(*, data: bytes) -> ImageInfo:
    """Validate upload bytes against the configured limits; ValidationError on `file` if bad."""
    try:
        return inspect_image_bytes(
            data,
            max_bytes=settings.SIMSEARCH_MAX_UPLOAD_BYTES,
            max_pixels=settings.SIMSEARCH_MAX_IMAGE_PIXELS,
        )
    except InvalidImage as exc:
        raise ValidationError({"file": [ValidationError(str(exc), code=exc.code)]}) from None


def _check_labels(*, image_type: str, defect_type: DefectType | None) -> None:
    if image_type not in ImageType.values:
        raise ValidationError(
            {"image_type": [f"Unknown image type {image_type!r}; use one of {', '.join(ImageType.values)}."]}
        )
    if image_type == ImageType.DEFECT and defect_type is None:
        raise ValidationError({"defect_type": ["A defect image needs a defect type."]})
    if image_type == ImageType.NORMAL and defect_type is not None:
        raise ValidationError({"defect_type": ["A normal image must not have a defect type."]})


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
        raise StorageUnavailable(f"The image could not be written to storage: {exc}") from exc


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
    is written, and files already stored are removed again if a later step fails."""
    _check_labels(image_type=image_type, defect_type=defect_type)
    if not uploads:
        raise ValidationError({"file": ["No file was uploaded."]})
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

    images = [
        _build(
            info=info,
            image_type=image_type,
            product=product,
            defect_type=defect_type,
            preprocessing_config=preprocessing_config,
            expires_at=expires_at,
        )
        for info in infos
    ]
    # All rows share their labels, so validating one checks the references and constraints.
    images[0].full_clean(exclude=["file"])
    stored: list[Image] = []
    try:
        for image, info, upload in zip(images, infos, uploads, strict=True):
            _store(image=image, info=info, data=upload.data)
            stored.append(image)
        with transaction.atomic():
            for image in images:
                image.save()
    except Exception:
        for image in stored:
            _discard_files(image=image)
        raise
    return images


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
    """Delete the row, then the stored file and preview once the deletion is committed."""
    storage, names = image.file.storage, _stored_names(image)
    with transaction.atomic():
        image.delete()
        transaction.on_commit(lambda: _delete_files_quietly(storage=storage, names=names))


def _delete_files_quietly(*, storage, names: list[str]) -> None:  # type: ignore[no-untyped-def]
    for name in names:
        try:
            storage.delete(name)
        except Exception:
            # The row is gone (or was never written); a leftover object costs only space and is
            # logged for cleanup.
            logger.exception("Could not delete %s from storage", name)


def temp_image_register(
    *, storage_key: str, product: Product, defect_type: DefectType | None, ttl_seconds: int
) -> Image:
    """Record an object a line worker already put in storage as a temporary query image.
    It is never indexed and is deleted (row and object) once it expires."""
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
    image.full_clean(exclude=["file"])
    image.save()
    return image


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
