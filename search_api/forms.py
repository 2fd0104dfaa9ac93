from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db import models
from django.utils.translation import gettext_lazy as _

from catalog.forms import use_image_autocomplete
from catalog.image_validation import read_limited
from catalog.models import DefectType, Product
from indexing.models import GalleryType
from search_api.models import SearchSource
from search_api.services import AnomalyInput, SearchInput


class ConsoleMode(models.TextChoices):
    SEARCH = "search", _("Similarity search")
    ANOMALY = "anomaly", _("Anomaly check")


class SearchConsoleForm(forms.Form):
    """The staff console's query: a photo, a catalog image or a text, with filters; or, in the
    anomaly mode, a photo or catalog image checked against its product's normal images."""

    mode = forms.ChoiceField(
        required=False,  # "Find similar" links and older bookmarks: a search
        label=_("Mode"),
        choices=ConsoleMode.choices,
        initial=ConsoleMode.SEARCH,
        widget=forms.RadioSelect,
        help_text=_("An anomaly check needs a photo (or a catalog image) and its product."),
    )
    photo = forms.ImageField(
        required=False, label=_("Photo"), help_text=_("A photo of the part (JPEG, PNG, BMP, TIFF, WEBP).")
    )
    image_id = forms.IntegerField(required=False, min_value=1, label=_("Catalog image id"))
    text = forms.CharField(
        required=False, max_length=500, label=_("Text"), help_text=_('e.g. "scratch on a metal surface"')
    )
    image_type = forms.ChoiceField(label=_("Image type"), choices=GalleryType.choices, initial=GalleryType.DEFECT)
    product = forms.ModelChoiceField(label=_("Product"), queryset=Product.objects.all(), required=False)
    defect_type = forms.ModelChoiceField(label=_("Defect type"), queryset=DefectType.objects.all(), required=False)
    top_k = forms.IntegerField(min_value=1, max_value=100, initial=10, label=_("Results"))
    exclude_self = forms.BooleanField(
        required=False,
        initial=True,
        label=_("Leave the query image itself out"),
        help_text=_("For a catalog image."),
    )
    focus = forms.ChoiceField(
        label=_("Search defects by"),
        required=False,
        choices=[
            ("", _("the defect region where possible")),
            ("defect", _("the defect region")),
            ("whole", _("the whole photo")),
        ],
        help_text=_(
            "Defect images of a product with an anomaly model are described by the photo's most anomalous region "
            "against the product's normal images; otherwise the whole photo is compared."
        ),
    )
    compare = forms.BooleanField(
        required=False,
        label=_("Compare engines"),
        help_text=_(
            "Answer from the V2 (catalog) and the V1 (legacy folder) index side by side, "
            "with their overlap and the pictures whose file-name and catalog labels disagree."
        ),
    )

    def __init__(self, *args: Any, admin_site: admin.AdminSite, compare_available: bool, **kwargs: Any):
        super().__init__(*args, **kwargs)
        use_image_autocomplete(self, admin_site)
        if not compare_available:
            # Greyed out in the page only: a compare that arrives anyway (the builds changed since
            # the page was drawn) is answered with the service's reason, not quietly as one search.
            self.fields["compare"].widget.attrs["disabled"] = True
            self.fields["compare"].help_text = _(
                "Needs an active V1 and an active V2 build of the same image type: build the legacy "
                "folder (INDEX_DIR_V1) on the Index builds page."
            )

    class Media:
        js = ["search_api/console.js"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        given = [name for name in ("photo", "image_id", "text") if cleaned.get(name) not in (None, "")]
        if cleaned.get("mode") == ConsoleMode.ANOMALY:
            if len(given) != 1 or given == ["text"]:
                raise ValidationError(_("An anomaly check needs exactly one photo or catalog image id (no text)."))
            if not cleaned.get("product") and not cleaned.get("image_id"):
                self.add_error("product", _("Choose the product of the part in the photo."))
            return cleaned
        if len(given) != 1:
            raise ValidationError(_("Give exactly one query: a photo, a catalog image id or a text."))
        if cleaned.get("defect_type") and cleaned.get("image_type") == GalleryType.NORMAL:
            self.add_error("defect_type", _("Normal images have no defect type."))
        return cleaned

    def search_input(self, *, request_host: str) -> SearchInput:
        data = self.cleaned_data
        photo = data.get("photo")
        image_id = data.get("image_id")
        product, defect_type = data.get("product"), data.get("defect_type")
        return SearchInput(
            top_k=data["top_k"],
            image_type=data["image_type"],
            upload=read_limited(photo, max_bytes=settings.SIMSEARCH_MAX_UPLOAD_BYTES) if photo else None,
            upload_name=photo.name if photo else "upload",
            image_id=image_id,
            text=data.get("text") or None,
            product_code=product.product_code if product else None,
            defect_code=defect_type.defect_code if defect_type else None,
            exclude_image_id=image_id if image_id and data.get("exclude_self") else None,
            request_host=request_host,
            source=SearchSource.CONSOLE,
            focus=data.get("focus") or None,
        )

    def anomaly_input(self, *, request_host: str) -> AnomalyInput:
        data = self.cleaned_data
        photo, product = data.get("photo"), data.get("product")
        return AnomalyInput(
            product_code=product.product_code if product else None,
            upload=read_limited(photo, max_bytes=settings.SIMSEARCH_MAX_UPLOAD_BYTES) if photo else None,
            upload_name=photo.name if photo else "upload",
            image_id=data.get("image_id"),
            request_host=request_host,
            source=SearchSource.CONSOLE,
        )
