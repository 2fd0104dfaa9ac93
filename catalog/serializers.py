from __future__ import annotations

from typing import Any

from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from catalog.models import DefectType, Image, ImageType, Product
from simsearch_project.fields import StrictCharField, StrictModelSerializer
from simsearch_project.json_input import BoundedJSONDecoder

# Catalog uploads are gallery images; temporary query images come through the worker API.
UPLOAD_IMAGE_TYPES = [
    (ImageType.DEFECT.value, ImageType.DEFECT.label),
    (ImageType.NORMAL.value, ImageType.NORMAL.label),
]


class ProductSerializer(StrictModelSerializer):
    class Meta:
        model = Product
        fields = [
            "id",
            "product_code",
            "product_name",
            "description",
            "created_at",
            "updated_at",
        ]


class DefectTypeSerializer(StrictModelSerializer):
    class Meta:
        model = DefectType
        fields = [
            "id",
            "defect_code",
            "defect_name_ko",
            "defect_name_en",
            "description",
            "created_at",
            "updated_at",
        ]


class ImageOutputSerializer(serializers.ModelSerializer):
    product_code = serializers.CharField(source="product.product_code")
    product_name = serializers.CharField(source="product.product_name")
    defect_code = serializers.CharField(source="defect_type.defect_code", default=None, allow_null=True)
    defect_name_ko = serializers.CharField(source="defect_type.defect_name_ko", default=None, allow_null=True)
    defect_name_en = serializers.CharField(source="defect_type.defect_name_en", default=None, allow_null=True)
    local_path = serializers.CharField(source="file.name")
    storage_url = serializers.SerializerMethodField()

    class Meta:
        model = Image
        fields = [
            "id",
            "image_type",
            "product_code",
            "product_name",
            "defect_code",
            "defect_name_ko",
            "defect_name_en",
            "local_path",
            "storage_url",
            "width",
            "height",
            "file_size",
            "sha256",
            "preprocessing_config",
            "uploaded_at",
            "expires_at",
        ]

    def get_storage_url(self, obj: Image) -> str:
        """A link that downloads the image (presigned for a private bucket, made per response)."""
        url = obj.file.url
        request = self.context.get("request")
        if request is not None and url.startswith("/"):
            return request.build_absolute_uri(url)
        return url


class ImageUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text=_("The image (JPEG, PNG, BMP, TIFF or WEBP)."))
    image_type = serializers.ChoiceField(choices=UPLOAD_IMAGE_TYPES)
    product_code = StrictCharField(max_length=64)
    defect_code = StrictCharField(max_length=64, required=False, allow_blank=True, default="")
    preprocessing_config = serializers.JSONField(required=False, default=dict, decoder=BoundedJSONDecoder)

    def validate_product_code(self, value: str) -> Product:
        product = Product.objects.filter(product_code=value).first()
        if product is None:
            raise serializers.ValidationError(gettext("Unknown product code “%(code)s”.") % {"code": value})
        return product

    def validate_defect_code(self, value: str) -> DefectType | None:
        if not value:
            return None
        defect_type = DefectType.objects.filter(defect_code=value).first()
        if defect_type is None:
            raise serializers.ValidationError(gettext("Unknown defect code “%(code)s”.") % {"code": value})
        return defect_type

    def validate_preprocessing_config(self, value: Any) -> dict:
        if not isinstance(value, dict):
            raise serializers.ValidationError(gettext("Must be a JSON object."))
        return value
