from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.middleware.csrf import get_token
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from catalog.forms import BulkUploadForm, ImageAdminForm
from catalog.image_validation import read_limited
from catalog.models import DefectType, Image, ImageType, Product
from catalog.services import SkippedDuplicate, UploadedImage, image_delete, images_bulk_create, images_create
from indexing.admin import REBUILD_ACTIONS
from indexing.selectors import serving_anomaly_model
from simsearch_project.errors import ServiceError
from simsearch_project.permissions import REBUILD_INDEX

admin.site.site_header = _("simsearch administration")
admin.site.site_title = "simsearch"
admin.site.index_title = _("Catalog and index builds")


def image_title(image: Image) -> str:
    """What a person calls the image: "bracket-a · defect · scratch (image 42)"."""
    parts = [image.product.product_code, image.image_type]
    if image.defect_type_id is not None:
        parts.append(image.defect_type.defect_code)
    return gettext("%(labels)s (image %(id)s)") % {"labels": " · ".join(parts), "id": image.pk}


class _NothingSaved(Exception):
    """Raised from save_model (which cannot return a response) to abort an add cleanly."""


def similar_images_url(image: Image) -> str:
    """The search console, asking for the images most like `image` (itself left out), in the
    index of its own kind (a temporary query image is compared with defect images)."""
    gallery = image.image_type if image.image_type in (ImageType.DEFECT, ImageType.NORMAL) else ImageType.DEFECT
    query = urlencode({"image_id": image.pk, "exclude_self": "on", "image_type": gallery, "top_k": 10})
    return f"{reverse('search-console')}?{query}"


def thumbnail_html(image: Image, size: int = 64) -> str:
    """The stored preview (a few KB) scaled to `size`; the file itself only for images without one."""
    if not image.file:
        return "—"
    return format_html(
        '<img src="{}" loading="lazy" style="max-width:{}px;max-height:{}px;border:1px solid #ccc" alt="{}">',
        (image.thumbnail or image.file).url,
        size,
        size,
        gettext("image %(id)s") % {"id": image.pk},
    )


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ["product_code", "product_name", "image_count", "updated_at"]
    search_fields = ["product_code", "product_name"]
    ordering = ["product_code"]
    # A product may have thousands of images: its page links to the image list filtered to it
    # (paginated, with filters and search) instead of listing every image inline.
    readonly_fields = ["images_link", "anomaly_model"]
    fields = ["product_code", "product_name", "description", "images_link", "anomaly_model", "anomaly_threshold"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Product]:
        return super().get_queryset(request).annotate(image_count=Count("images"))

    @admin.display(description=_("Images"), ordering="image_count")
    def image_count(self, obj: Product) -> int:
        return obj.image_count  # type: ignore[attr-defined]

    @admin.display(description=_("Images"))
    def images_link(self, obj: Product) -> str:
        if obj.pk is None:
            return "—"
        count = getattr(obj, "image_count", None)
        if count is None:  # an object not loaded through get_queryset
            count = obj.images.count()
        return format_html(
            '<a href="{}?product__id__exact={}" id="product-images-link">{}</a>',
            reverse("admin:catalog_image_changelist"),
            obj.pk,
            ngettext("%(count)s image of this product", "%(count)s images of this product", count) % {"count": count},
        )

    @admin.display(description=_("Anomaly model"))
    def anomaly_model(self, obj: Product) -> str:
        model = serving_anomaly_model(product_id=obj.pk) if obj.pk else None
        if model is None:
            return gettext(
                "None in the active normal index: a product needs %(needs)s normal images, then a rebuild "
                "of the normal index."
            ) % {"needs": settings.SIMSEARCH_ANOMALY_MIN_NORMALS}
        if model.image_auroc is not None:
            auroc = gettext("image AUROC %(auroc).3f on %(count)s defect images") % {
                "auroc": model.image_auroc,
                "count": model.defect_count,
            }
        elif model.defect_count and not model.eval_set_sha256:
            auroc = gettext(
                "its image AUROC on %(count)s defect images is measured just after the build goes live; "
                "if it stays empty, the next build measures it"
            ) % {"count": model.defect_count}
        else:
            auroc = gettext("no defect images to evaluate it on")
        return gettext(
            "Calibrated threshold %(threshold).4f from %(count)s normal images (build %(build)s); %(auroc)s."
        ) % {"threshold": model.threshold, "count": model.normal_count, "build": model.build_id, "auroc": auroc}


@admin.register(DefectType)
class DefectTypeAdmin(admin.ModelAdmin):
    list_display = ["defect_code", "defect_name_ko", "defect_name_en", "image_count"]
    search_fields = ["defect_code", "defect_name_ko", "defect_name_en"]
    ordering = ["defect_code"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[DefectType]:
        return super().get_queryset(request).annotate(image_count=Count("images"))

    @admin.display(description=_("Images"), ordering="image_count")
    def image_count(self, obj: DefectType) -> int:
        return obj.image_count  # type: ignore[attr-defined]


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    form = ImageAdminForm
    change_list_template = "admin/catalog/image/change_list.html"
    list_display = [
        "id",
        "picture",
        "image_type",
        "product",
        "defect_label",
        "size_label",
        "uploaded_at",
    ]
    list_display_links = ["id", "picture"]
    list_filter = ["image_type", "product", "defect_type"]
    list_select_related = ["product", "defect_type"]
    search_fields = [
        "product__product_code",
        "product__product_name",
        "defect_type__defect_code",
        "defect_type__defect_name_ko",
        "defect_type__defect_name_en",
        "sha256",
    ]
    autocomplete_fields = ["product", "defect_type"]
    date_hierarchy = "uploaded_at"
    list_per_page = 50
    actions = ["find_similar", *REBUILD_ACTIONS]
    change_form_template = "admin/catalog/image/change_form.html"

    def has_rebuild_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(REBUILD_INDEX)

    @admin.action(description=_("Find similar images (select one)"), permissions=["view"])
    def find_similar(self, request: HttpRequest, queryset: QuerySet[Image]) -> HttpResponse | None:
        if queryset.count() != 1:
            self.message_user(request, gettext("Select exactly one image to find the ones like it."), messages.WARNING)
            return None
        return HttpResponseRedirect(similar_images_url(queryset.get()))

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        # Rebuild actions act on whole galleries: let them run without a selection.
        if request.method == "POST" and request.POST.get("action", "").startswith("rebuild_"):
            if not request.POST.getlist(admin.helpers.ACTION_CHECKBOX_NAME):
                post = request.POST.copy()
                post.setlist(
                    admin.helpers.ACTION_CHECKBOX_NAME, [str(i) for i in Image.objects.values_list("pk", flat=True)[:1]]
                )
                request.POST = post  # type: ignore[assignment]
        return super().changelist_view(request, extra_context)

    # Set by the server (from the file, or by the API for query images), never typed by a person;
    # their help text is in ImageAdminForm.Meta.help_texts.
    RECORDED_FIELDS = ["width", "height", "file_size", "sha256", "uploaded_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: Image | None = None) -> list[str]:
        if obj is None:
            return ["preview", *self.RECORDED_FIELDS]
        # Only what the image is of stays editable; the file is fixed (a different picture is a
        # different image), and the rest was recorded when it arrived.
        editable = {"image_type", "product", "defect_type"}
        return [name for name in self.get_fields(request, obj) if name not in editable]

    def get_fields(self, request: HttpRequest, obj: Image | None = None) -> list[str]:
        if obj is None:
            return ["file", "image_type", "product", "defect_type", "preprocessing_config", "expires_at"]
        fields = ["preview", "file", "image_type", "product", "defect_type"]
        if obj.preprocessing_config:  # an empty {} says nothing
            fields.append("preprocessing_config")
        if obj.image_type == ImageType.QUERY_TEMP:  # catalog images neither expire nor have a registrant
            fields += ["expires_at", "registered_by"]
        return [*fields, *self.RECORDED_FIELDS]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        image = self.get_object(request, object_id)
        if image is not None:  # an unknown id falls through to the admin's own redirect
            extra_context = {
                **(extra_context or {}),
                "title": image_title(image),
                "subtitle": None,
                "similar_url": similar_images_url(image),
            }
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.display(description=_("Image"))
    def picture(self, obj: Image) -> str:
        return thumbnail_html(obj)

    @admin.display(description=_("Preview"))
    def preview(self, obj: Image) -> str:
        if not obj.file:
            return "—"
        return format_html(
            '<a href="{}" title="{}">{}</a>', obj.file.url, gettext("Open full size"), thumbnail_html(obj, size=320)
        )

    @admin.display(description=_("Defect"), ordering="defect_type__defect_code")
    def defect_label(self, obj: Image) -> str:
        return str(obj.defect_type) if obj.defect_type else "—"

    @admin.display(description=_("Size"))
    def size_label(self, obj: Image) -> str:
        return f"{obj.width}×{obj.height}, {obj.file_size / 1024:.0f} KB"

    def save_model(self, request: HttpRequest, obj: Image, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        upload = form.cleaned_data["file"]
        try:
            (created,) = images_create(
                uploads=[
                    UploadedImage(
                        upload.name,
                        read_limited(upload, max_bytes=settings.SIMSEARCH_MAX_UPLOAD_BYTES),
                    )
                ],
                image_type=obj.image_type,
                product=obj.product,
                defect_type=obj.defect_type,
                preprocessing_config=obj.preprocessing_config,
                expires_at=obj.expires_at,
            )
        except ServiceError as exc:
            raise _NothingSaved(exc.message) from exc
        for field in Image._meta.concrete_fields:
            setattr(obj, field.attname, getattr(created, field.attname))
        obj._state.adding = False

    def add_view(
        self,
        request: HttpRequest,
        form_url: str = "",
        extra_context: dict | None = None,
    ) -> HttpResponse:
        try:
            return super().add_view(request, form_url, extra_context)
        except _NothingSaved as exc:
            self.message_user(request, gettext("Nothing was saved: %(reason)s") % {"reason": exc}, messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def delete_model(self, request: HttpRequest, obj: Image) -> None:
        image_delete(image=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Image]) -> None:
        for image in queryset:
            image_delete(image=image)

    def get_urls(self) -> list:
        custom = [
            path(
                "bulk-upload/",
                self.admin_site.admin_view(self.bulk_upload_view),
                name="catalog_image_bulk_upload",
            )
        ]
        return custom + super().get_urls()

    @staticmethod
    def _skipped_message(skipped: list[SkippedDuplicate]) -> str:
        text = gettext(
            "Skipped %(count)s duplicate file(s), identical to images already in the catalog for this product:"
        ) % {"count": len(skipped)}
        return format_html(
            "{} {}.",
            text,
            format_html_join(
                ", ",
                '{} (<a href="{}">{}</a>)',
                (
                    (
                        item.name,
                        reverse("admin:catalog_image_change", args=[item.existing_image_id]),
                        gettext("image %(id)s") % {"id": item.existing_image_id},
                    )
                    for item in skipped
                ),
            ),
        )

    def _not_searchable_message(self, request: HttpRequest, count: int, image_type: str) -> str:
        """New images join the search only with the next build: say so, and offer that build right
        here to those who may start one (a POST to the index builds page's rebuild URL)."""
        text = ngettext(
            "%(count)s image is not searchable until the next rebuild.",
            "%(count)s images are not searchable until the next rebuild.",
            count,
        ) % {"count": count}
        if not self.has_rebuild_permission(request):
            return text
        return format_html(
            '{} <form method="post" action="{}" class="rebuild-after-upload" style="display:inline">'
            '<input type="hidden" name="csrfmiddlewaretoken" value="{}">'
            '<button type="submit" name="index_type" value="{}" class="button">{}</button></form>',
            text,
            reverse("admin:indexing_indexbuild_rebuild"),
            get_token(request),
            image_type,
            gettext("Rebuild the %(image_type)s index") % {"image_type": image_type},
        )

    def bulk_upload_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_add_permission(request):
            return HttpResponse(gettext("You may not add images."), status=403)
        form = BulkUploadForm(request.POST or None, request.FILES or None, admin_site=self.admin_site)
        if request.method == "POST" and form.is_valid():
            try:
                result = images_bulk_create(
                    uploads=form.uploads(max_bytes=settings.SIMSEARCH_MAX_UPLOAD_BYTES),
                    image_type=form.cleaned_data["image_type"],
                    product=form.cleaned_data["product"],
                    defect_type=form.cleaned_data["defect_type"],
                )
            except ValidationError as exc:
                for field, errors in exc.message_dict.items():
                    form.add_error("files" if field in {"file", "__all__"} else field, errors)
            except ServiceError as exc:
                form.add_error(None, exc.message)
            else:
                uploaded = len(result.created)
                self.message_user(
                    request,
                    gettext("Uploaded %(count)s images.") % {"count": uploaded},
                    messages.SUCCESS,
                )
                if result.created:
                    self.message_user(
                        request,
                        self._not_searchable_message(request, len(result.created), form.cleaned_data["image_type"]),
                        messages.WARNING,
                    )
                if result.skipped:
                    self.message_user(request, self._skipped_message(result.skipped), messages.WARNING)
                return HttpResponseRedirect(reverse("admin:catalog_image_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": gettext("Bulk upload images"),
            "form": form,
            "media": self.media + form.media,
            "max_files": settings.SIMSEARCH_BULK_UPLOAD_MAX_FILES,
        }
        return TemplateResponse(request, "admin/catalog/image/bulk_upload.html", context)
