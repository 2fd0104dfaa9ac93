from __future__ import annotations

import django_filters
from django.conf import settings
from django.db.models import QuerySet
from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from catalog.image_validation import read_limited
from catalog.models import DefectType, Image, ImageType, Product
from catalog.selectors import image_list, image_list_visible_to
from catalog.serializers import (
    DefectTypeSerializer,
    ImageOutputSerializer,
    ImageUploadSerializer,
    ProductSerializer,
)
from catalog.services import UploadedImage, image_delete, images_create
from simsearch_project.drf_defaults import BoundedJSONParser, StrictMultiPartParser
from simsearch_project.permissions import CatalogModelPermissions

# Ids are integers: DRF's default pattern lets "/api/products/%0C1/" reach int(), which strips the
# form feed and answers product 1.
ID_PATTERN = "[0-9]+"


class ProductViewSet(viewsets.ModelViewSet):
    queryset = Product.objects.all()
    serializer_class = ProductSerializer
    permission_classes = [CatalogModelPermissions]
    lookup_value_regex = ID_PATTERN
    parser_classes = [BoundedJSONParser]
    search_fields = ["product_code", "product_name"]
    filterset_fields = ["product_code"]
    ordering_fields = ["product_code", "created_at"]


class DefectTypeViewSet(viewsets.ModelViewSet):
    queryset = DefectType.objects.all()
    serializer_class = DefectTypeSerializer
    permission_classes = [CatalogModelPermissions]
    lookup_value_regex = ID_PATTERN
    parser_classes = [BoundedJSONParser]
    search_fields = ["defect_code", "defect_name_ko", "defect_name_en"]
    filterset_fields = ["defect_code"]
    ordering_fields = ["defect_code", "created_at"]


class ImageFilter(django_filters.FilterSet):
    image_type = django_filters.ChoiceFilter(choices=ImageType.choices)
    product_code = django_filters.CharFilter(field_name="product__product_code")
    defect_code = django_filters.CharFilter(field_name="defect_type__defect_code")
    sha256 = django_filters.CharFilter()

    class Meta:
        model = Image
        fields = ["image_type", "product_code", "defect_code", "sha256"]


class ImageViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Catalog images. Upload with multipart `file`, `image_type`, `product_code`, `defect_code`."""

    queryset = image_list()
    serializer_class = ImageOutputSerializer
    permission_classes = [CatalogModelPermissions]
    lookup_value_regex = ID_PATTERN
    # An upload carries a file: multipart is the only body this view reads.
    parser_classes = [StrictMultiPartParser]
    filterset_class = ImageFilter
    search_fields = [
        "product__product_code",
        "product__product_name",
        "defect_type__defect_code",
    ]
    ordering_fields = ["uploaded_at", "id"]

    def get_queryset(self) -> QuerySet[Image]:
        if getattr(self, "swagger_fake_view", False):  # drf-spectacular's schema pass has no user
            return image_list().none()
        # Other clients' temporary query images stay hidden from list, retrieve and delete.
        return image_list_visible_to(user=self.request.user)

    @extend_schema(
        request=ImageUploadSerializer,
        responses={
            201: ImageOutputSerializer,
            409: OpenApiResponse(
                response=inline_serializer(
                    "DuplicateImageError",
                    fields={
                        "detail": serializers.CharField(),
                        "code": serializers.CharField(),
                        "existing_image_id": serializers.IntegerField(required=False),
                    },
                ),
                description=_(
                    "The same picture (identical bytes) is already a catalog image of this product; "
                    "existing_image_id names it."
                ),
            ),
        },
    )
    def create(self, request: Request) -> Response:
        upload = ImageUploadSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        data = upload.validated_data
        file = data["file"]
        (image,) = images_create(
            uploads=[
                UploadedImage(
                    file.name,
                    read_limited(file, max_bytes=settings.SIMSEARCH_MAX_UPLOAD_BYTES),
                )
            ],
            image_type=data["image_type"],
            product=data["product_code"],
            defect_type=data["defect_code"],
            preprocessing_config=data["preprocessing_config"],
        )
        return Response(self.get_serializer(image).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: Image) -> None:
        image_delete(image=instance)
