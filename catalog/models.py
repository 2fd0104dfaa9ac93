from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

# Codes end up in URLs, filters and legacy file names (`<product>_<defect>_...`), so they are
# restricted to a safe alphabet without underscores.
code_validator = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9.-]{0,63}$",
    "Use 1-64 letters, digits, '-' or '.', starting with a letter or digit (no spaces or '_').",
)


class Product(models.Model):
    product_code = models.CharField(max_length=64, unique=True, validators=[code_validator])
    product_name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["product_code"]

    def __str__(self) -> str:
        return f"{self.product_code} — {self.product_name}"


class DefectType(models.Model):
    defect_code = models.CharField(max_length=64, unique=True, validators=[code_validator])
    defect_name_ko = models.CharField("Korean name", max_length=200)
    defect_name_en = models.CharField("English name", max_length=200)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["defect_code"]

    def __str__(self) -> str:
        return f"{self.defect_code} — {self.defect_name_ko} / {self.defect_name_en}"


class ImageType(models.TextChoices):
    NORMAL = "normal", "Normal part"
    DEFECT = "defect", "Defective part"
    QUERY_TEMP = "query_temp", "Temporary query image"


def image_upload_to(instance: Image, filename: str) -> str:
    """Server-generated object key; only the extension (chosen by the server from the
    detected format) survives from `filename`."""
    extension = filename.rsplit(".", 1)[-1].lower() if "." in filename else "bin"
    now = instance.uploaded_at or timezone.now()
    return f"images/{instance.image_type}/{now:%Y/%m}/{uuid.uuid4().hex}.{extension}"


def thumbnail_upload_to(instance: Image, filename: str) -> str:
    """The preview sits beside the image's key under thumbnails/: images/defect/2026/11/ab12.png
    -> thumbnails/defect/2026/11/ab12.jpg."""
    stem = instance.file.name.removeprefix("images/").rsplit(".", 1)[0]
    return f"thumbnails/{stem}.jpg"


class Image(models.Model):
    file = models.FileField(upload_to=image_upload_to, max_length=255)
    # A small JPEG for the admin's lists; empty where none could be made (the list shows the file).
    thumbnail = models.FileField(upload_to=thumbnail_upload_to, max_length=255, blank=True, editable=False)
    image_type = models.CharField(max_length=16, choices=ImageType.choices, db_index=True)
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="images", db_index=True)
    defect_type = models.ForeignKey(
        DefectType,
        on_delete=models.PROTECT,
        related_name="images",
        null=True,
        blank=True,
        db_index=True,
    )
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    file_size = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64, db_index=True)
    preprocessing_config = models.JSONField(default=dict, blank=True)
    uploaded_at = models.DateTimeField(auto_now_add=True, db_index=True)
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # Who registered a temporary query image: the API shows such rows only to their registrant
    # and to users with catalog.view_image.
    registered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        editable=False,
        related_name="registered_images",
    )

    class Meta:
        ordering = ["-uploaded_at", "-id"]
        permissions = [("register_query_image", "Can register temporary query images")]
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(image_type=ImageType.DEFECT, defect_type__isnull=False)
                    | Q(image_type=ImageType.NORMAL, defect_type__isnull=True)
                    | Q(image_type=ImageType.QUERY_TEMP)
                ),
                name="image_defect_type_matches_image_type",
                violation_error_message=("A defect image needs a defect type, and a normal image must not have one."),
            ),
            models.CheckConstraint(
                condition=Q(image_type__in=ImageType.values),
                name="image_type_valid",
                violation_error_message="Unknown image type.",
            ),
        ]
        indexes = [
            models.Index(
                fields=["image_type", "product", "defect_type"],
                name="image_gallery_idx",
            )
        ]

    def __str__(self) -> str:
        return f"Image {self.pk} ({self.image_type}, {self.product_id})"
