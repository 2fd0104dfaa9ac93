from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin
from django.contrib.admin.widgets import AutocompleteSelect
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from catalog.image_validation import read_limited
from catalog.models import DefectType, Image, ImageType, Product
from catalog.selectors import catalog_images_by_hash
from catalog.services import UploadedImage, image_inspect
from simsearch_project.json_input import BoundedJSONDecoder


class ImageAdminForm(forms.ModelForm):
    """Admin form for one image: the file is checked with the same rules as the API."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if "preprocessing_config" in self.fields:  # JSON typed by a person: bounded nesting
            self.fields["preprocessing_config"].decoder = BoundedJSONDecoder

    class Meta:
        model = Image
        fields = [
            "file",
            "image_type",
            "product",
            "defect_type",
            "preprocessing_config",
            "expires_at",
        ]
        # The admin shows these under the read-only fields too (the model carries no help text,
        # which would need a migration for words only).
        help_texts = {
            "preprocessing_config": _(
                "Optional notes (JSON) on how the photo was taken or prepared, kept with the image as the "
                "uploader sent them; search does not use them."
            ),
            "expires_at": _(
                "When this temporary query image is deleted by the purge schedule; catalog images (normal, defect) "
                "never expire."
            ),
            "registered_by": _(
                "The account that registered this temporary query image; only it and staff who may view images "
                "can use it."
            ),
            "width": _("Pixels, read from the file at upload."),
            "height": _("Pixels, read from the file at upload."),
            "file_size": _("Bytes of the stored file."),
            "sha256": _(
                "Hash of the file's bytes: finds duplicate uploads and lets a rebuild reuse this image's earlier "
                "embedding instead of computing it again."
            ),
            "uploaded_at": _("When the file was stored."),
        }

    def clean_file(self) -> Any:
        upload = self.cleaned_data.get("file")
        if upload is not None and hasattr(upload, "content_type"):  # a new upload, not the stored file
            data = read_limited(upload, max_bytes=settings.SIMSEARCH_MAX_UPLOAD_BYTES)
            try:
                self.upload_sha256 = image_inspect(data=data).sha256
            except ValidationError as exc:
                raise ValidationError(exc.message_dict["file"]) from None
            upload.seek(0)
        return upload

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        sha256, product = getattr(self, "upload_sha256", None), cleaned.get("product")
        if sha256 and product is not None and cleaned.get("image_type") != ImageType.QUERY_TEMP:
            existing = catalog_images_by_hash(product=product, hashes=[sha256]).get(sha256)
            if existing is not None:
                # The upload service refuses it too (409); here the staff member gets a link to it.
                self.add_error(
                    "file",
                    format_html(
                        gettext(
                            'The same picture (identical bytes) is already <a href="{url}">image {id}</a> of {product}.'
                        ),
                        url=reverse("admin:catalog_image_change", args=[existing]),
                        id=existing,
                        product=product.product_code,
                    ),
                )
        return cleaned


def use_image_autocomplete(form: forms.Form, admin_site: admin.AdminSite) -> None:
    """Give a form's `product` and `defect_type` choices the admin's autocomplete, as on the
    image pages (a plant has too many products for a plain select)."""
    for name in ("product", "defect_type"):
        field = form.fields[name]
        field.widget = AutocompleteSelect(Image._meta.get_field(name), admin_site)
        field.queryset = field.queryset  # binds the new widget's choices


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleImageField(forms.FileField):
    widget = MultipleFileInput

    def clean(self, data: Any, initial: Any = None) -> list[Any]:
        files = data if isinstance(data, (list, tuple)) else [data] if data else []
        if not files:
            raise ValidationError(gettext("Choose at least one image file."), code="required")
        return [super(MultipleImageField, self).clean(f, initial) for f in files]


class BulkUploadForm(forms.Form):
    """Many image files at once, all for one product, image type and defect type."""

    image_type = forms.ChoiceField(
        label=_("Image type"),
        choices=[
            (ImageType.DEFECT, ImageType.DEFECT.label),
            (ImageType.NORMAL, ImageType.NORMAL.label),
        ],
    )
    product = forms.ModelChoiceField(label=_("Product"), queryset=Product.objects.all())
    defect_type = forms.ModelChoiceField(
        label=_("Defect type"),
        queryset=DefectType.objects.all(),
        required=False,
        help_text=_("Required for defect images; leave empty for normal images."),
    )
    files = MultipleImageField(label=_("Files"), help_text=_("Select many files at once (JPEG, PNG, BMP, TIFF, WEBP)."))

    def __init__(self, *args: Any, admin_site: admin.AdminSite, **kwargs: Any):
        super().__init__(*args, **kwargs)
        use_image_autocomplete(self, admin_site)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        image_type, defect_type = cleaned.get("image_type"), cleaned.get("defect_type")
        if image_type == ImageType.DEFECT and defect_type is None:
            self.add_error("defect_type", gettext("A defect image needs a defect type."))
        if image_type == ImageType.NORMAL and defect_type is not None:
            self.add_error("defect_type", gettext("A normal image must not have a defect type."))
        return cleaned

    def uploads(self, *, max_bytes: int) -> list[UploadedImage]:
        return [
            UploadedImage(name=f.name, data=read_limited(f, max_bytes=max_bytes)) for f in self.cleaned_data["files"]
        ]
