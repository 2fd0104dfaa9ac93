from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

# Codes end up in URLs, filters and legacy file names (`<product>_<defect>_...`), so they are
# restricted to a safe alphabet without underscores.
code_validator = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9.-]{0,63}$",
    _("Use 1-64 letters, digits, '-' or '.', starting with a letter or digit (no spaces or '_')."),
)


class Product(models.Model):
    product_code = models.CharField(_("product code"), max_length=64, unique=True, validators=[code_validator])
    product_name = models.CharField(_("product name"), max_length=200)
    description = models.TextField(_("description"), blank=True)
    anomaly_threshold = models.FloatField(
        _("anomaly threshold (override)"),
        null=True,
        blank=True,
        validators=[MinValueValidator(0.0)],
        help_text=_(
            "Leave empty to use the threshold calibrated from this product's normal images at each "
            "build. A value here decides the verdict of every anomaly check of this product instead."
        ),
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        ordering = ["product_code"]
        verbose_name = _("product")
        verbose_name_plural = _("products")

    def __str__(self) -> str:
        return f"{self.product_code} — {self.product_name}"


class DefectType(models.Model):
    defect_code = models.CharField(_("defect code"), max_length=64, unique=True, validators=[code_validator])
    defect_name_ko = models.CharField(_("Korean name"), max_length=200)
    defect_name_en = models.CharField(_("English name"), max_length=200)
    description = models.TextField(_("description"), blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        ordering = ["defect_code"]
        verbose_name = _("defect type")
        verbose_name_plural = _("defect types")

    def __str__(self) -> str:
        return f"{self.defect_code} — {self.defect_name_ko} / {self.defect_name_en}"


class ImageType(models.TextChoices):
    NORMAL = "normal", _("Normal part")
    DEFECT = "defect", _("Defective part")
    QUERY_TEMP = "query_temp", _("Temporary query image")


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
    file = models.FileField(_("file"), upload_to=image_upload_to, max_length=255)
    # A small JPEG for the admin's lists; empty where none could be made (the list shows the file).
    thumbnail = models.FileField(
        _("thumbnail"), upload_to=thumbnail_upload_to, max_length=255, blank=True, editable=False
    )
    image_type = models.CharField(_("image type"), max_length=16, choices=ImageType.choices, db_index=True)
    product = models.ForeignKey(
        Product, on_delete=models.PROTECT, related_name="images", db_index=True, verbose_name=_("product")
    )
    defect_type = models.ForeignKey(
        DefectType,
        on_delete=models.PROTECT,
        related_name="images",
        null=True,
        blank=True,
        db_index=True,
        verbose_name=_("defect type"),
    )
    width = models.PositiveIntegerField(_("width"))
    height = models.PositiveIntegerField(_("height"))
    file_size = models.PositiveBigIntegerField(_("file size"))
    sha256 = models.CharField(_("SHA-256"), max_length=64, db_index=True)
    preprocessing_config = models.JSONField(_("preprocessing config"), default=dict, blank=True)
    uploaded_at = models.DateTimeField(_("uploaded at"), auto_now_add=True, db_index=True)
    expires_at = models.DateTimeField(_("expires at"), null=True, blank=True, db_index=True)
    # Who registered a temporary query image: the API shows such rows only to their registrant
    # and to users with catalog.view_image.
    registered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        editable=False,
        related_name="registered_images",
        verbose_name=_("registered by"),
    )

    class Meta:
        ordering = ["-uploaded_at", "-id"]
        verbose_name = _("image")
        verbose_name_plural = _("images")
        # Permission names are stored in the database in English, like Django's own.
        permissions = [("register_query_image", "Can register temporary query images")]
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(image_type=ImageType.DEFECT, defect_type__isnull=False)
                    | Q(image_type=ImageType.NORMAL, defect_type__isnull=True)
                    | Q(image_type=ImageType.QUERY_TEMP)
                ),
                name="image_defect_type_matches_image_type",
                violation_error_message=_("A defect image needs a defect type, and a normal image must not have one."),
            ),
            models.CheckConstraint(
                condition=Q(image_type__in=ImageType.values),
                name="image_type_valid",
                violation_error_message=_("Unknown image type."),
            ),
        ]
        indexes = [
            models.Index(
                fields=["image_type", "product", "defect_type"],
                name="image_gallery_idx",
            )
        ]

    def __str__(self) -> str:
        return gettext("Image %(id)s (%(image_type)s, %(product_id)s)") % {
            "id": self.pk,
            "image_type": self.image_type,
            "product_id": self.product_id,
        }
