from __future__ import annotations

from typing import Any

from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from indexing.models import GalleryType, IndexBuild
from simsearch_project.fields import StrictCharField, StrictIntegerField


class SimilaritySearchRequestSerializer(serializers.Serializer):
    """Exactly one query: `image` (multipart file), `image_id`, `storage_url` or `text`.

    An empty optional field means "not given", in JSON as in a form: DRF reads an empty form field
    that way, and a form in a browser sends every field, filled in or not."""

    image = serializers.FileField(required=False, help_text=_("The query photo (JPEG, PNG, BMP, TIFF, WEBP)."))
    image_id = StrictIntegerField(required=False, min_value=1, help_text=_("Search with a catalog image."))
    storage_url = StrictCharField(
        required=False,
        allow_blank=True,
        max_length=2000,
        help_text=_("A link to an object in this deployment's bucket or media."),
    )
    text = StrictCharField(
        required=False,
        allow_blank=True,
        max_length=500,
        help_text=_('A text query, e.g. "scratch on a metal surface".'),
    )
    top_k = StrictIntegerField(required=False, default=5, min_value=1, max_value=100)
    image_type = serializers.ChoiceField(choices=GalleryType.choices, required=False, default=GalleryType.DEFECT)
    product_code = StrictCharField(required=False, allow_blank=True, max_length=64)
    defect_code = StrictCharField(required=False, allow_blank=True, max_length=64)
    exclude_image_id = StrictIntegerField(required=False, min_value=1)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        given = [name for name in ("image", "image_id", "storage_url", "text") if attrs.get(name) not in (None, "")]
        if len(given) != 1:
            message = (
                gettext("Send exactly one of image, image_id, storage_url or text (got %(given)s).")
                % {"given": ", ".join(given)}
                if given
                else gettext("Send exactly one of image, image_id, storage_url or text.")
            )
            raise serializers.ValidationError({"query": message})
        if attrs.get("defect_code") and attrs.get("image_type") == GalleryType.NORMAL:
            raise serializers.ValidationError(
                {
                    "defect_code": gettext(
                        "Normal images have no defect type: drop defect_code or search image_type=defect."
                    )
                }
            )
        return attrs


class SimilaritySearchJsonRequestSerializer(SimilaritySearchRequestSerializer):
    """A search without a file (JSON or a urlencoded form): image_id, storage_url or text."""

    image = None


class AnomalyDetectRequestSerializer(serializers.Serializer):
    """Exactly one photo: `image` (multipart file), `image_id` or `storage_url`; `product_code`
    unless `image_id` gives the product."""

    image = serializers.FileField(required=False, help_text=_("The photo to check (JPEG, PNG, BMP, TIFF, WEBP)."))
    image_id = StrictIntegerField(required=False, min_value=1, help_text=_("Check a catalog image."))
    storage_url = StrictCharField(
        required=False,
        allow_blank=True,
        max_length=2000,
        help_text=_("A link to an object in this deployment's bucket or media."),
    )
    product_code = StrictCharField(
        required=False,
        allow_blank=True,
        max_length=64,
        help_text=_("The product in the photo (required unless image_id gives it)."),
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        given = [name for name in ("image", "image_id", "storage_url") if attrs.get(name) not in (None, "")]
        if len(given) != 1:
            message = (
                gettext("Send exactly one of image, image_id or storage_url (got %(given)s).")
                % {"given": ", ".join(given)}
                if given
                else gettext("Send exactly one of image, image_id or storage_url.")
            )
            raise serializers.ValidationError({"query": message})
        if not attrs.get("product_code") and attrs.get("image_id") is None:
            raise serializers.ValidationError(
                {"product_code": gettext("Give the product_code of the part in the photo.")}
            )
        return attrs


class AnomalyDetectJsonRequestSerializer(AnomalyDetectRequestSerializer):
    """A check without a file (JSON or a urlencoded form): image_id or storage_url."""

    image = None


class IndexInfoSerializer(serializers.Serializer):
    build_id = serializers.IntegerField()
    image_type = serializers.CharField()
    engine = serializers.CharField()
    model = serializers.CharField()
    pretrained = serializers.CharField()
    is_untrained = serializers.BooleanField()
    built_at = serializers.CharField()
    vector_count = serializers.IntegerField()


class V2ResultSerializer(serializers.Serializer):
    image_id = serializers.IntegerField()
    similarity_score = serializers.FloatField()
    local_path = serializers.CharField()
    storage_url = serializers.CharField()
    product_code = serializers.CharField()
    product_name = serializers.CharField()
    defect_code = serializers.CharField(allow_null=True)
    defect_name = serializers.CharField(allow_null=True)
    defect_name_en = serializers.CharField(allow_null=True)
    image_type = serializers.CharField()


class SimilaritySearchResponseSerializer(serializers.Serializer):
    status = serializers.CharField()
    version = serializers.ChoiceField(choices=["v1", "v2"])
    query_image = serializers.CharField()
    index = IndexInfoSerializer()
    results = V2ResultSerializer(
        many=True, help_text=_("V1 answers carry image_path, similarity_score, product, defect.")
    )
    warning = serializers.CharField(required=False)


class NearestNormalSerializer(serializers.Serializer):
    image_id = serializers.IntegerField()
    similarity_score = serializers.FloatField()
    storage_url = serializers.CharField()


class AnomalyFeaturesSerializer(serializers.Serializer):
    backbone = serializers.CharField()
    is_untrained = serializers.BooleanField()


class AnomalyDetectResponseSerializer(serializers.Serializer):
    status = serializers.CharField()
    product_code = serializers.CharField()
    anomaly_score = serializers.FloatField()
    threshold = serializers.FloatField()
    calibrated_threshold = serializers.FloatField()
    is_anomalous = serializers.BooleanField()
    heatmap_url = serializers.CharField()
    overlay_url = serializers.CharField()
    anomaly_map_url = serializers.CharField(
        help_text=_("16-bit greyscale PNG at the photo's size: distance = pixel / 65535 × anomaly_map_scale.")
    )
    anomaly_map_scale = serializers.FloatField()
    nearest_normal = NearestNormalSerializer(allow_null=True)
    index = IndexInfoSerializer()
    anomaly_features = AnomalyFeaturesSerializer()
    expires_at = serializers.DateTimeField()
    warning = serializers.CharField(required=False)


class IndexBuildSerializer(serializers.ModelSerializer):
    requested_by = serializers.CharField(source="requested_by.username", default=None, allow_null=True)
    duration_seconds = serializers.FloatField(read_only=True, allow_null=True)

    class Meta:
        model = IndexBuild
        fields = [
            "id",
            "image_type",
            "engine",
            "status",
            "is_active",
            "progress_done",
            "progress_total",
            "vector_count",
            "embedded_count",
            "reused_count",
            "missing_count",
            "model_name",
            "pretrained",
            "is_untrained",
            "model_fingerprint",
            "artifact_prefix",
            "timings",
            "error",
            "requested_by",
            "task_id",
            "created_at",
            "started_at",
            "finished_at",
            "activated_at",
            "duration_seconds",
        ]


class IndexBuildPublicSerializer(serializers.ModelSerializer):
    """What any signed-in client may know about an active build: no requester, storage prefix,
    task id, model fingerprint, error or worker."""

    class Meta:
        model = IndexBuild
        fields = [
            "id",
            "image_type",
            "engine",
            "model_name",
            "pretrained",
            "is_untrained",
            "vector_count",
            "finished_at",
            "activated_at",
        ]


class IndexStatusResponseSerializer(serializers.Serializer):
    engine = serializers.CharField(help_text=_("The engine that answers searches (v2 or v1)."))
    active = serializers.DictField(
        child=serializers.DictField(child=IndexBuildPublicSerializer()),
        help_text=_(
            "engine -> image type -> active build. Users with indexing.view_indexbuild get every field of an "
            "index build (as /api/index/builds/<id>/); others get this summary."
        ),
    )
    loaded = serializers.DictField(
        child=serializers.IntegerField(), help_text=_('"<engine>/<image type>" -> build id this process serves.')
    )
    degraded = serializers.CharField(
        allow_null=True, help_text=_("Why this process serves from its local cache only, if it does.")
    )


class RebuildRequestSerializer(serializers.Serializer):
    index_type = serializers.ChoiceField(
        choices=["defect", "normal", "all"], help_text=_("Which index to rebuild; in the body or the query string.")
    )


class RebuildResponseSerializer(serializers.Serializer):
    task_id = serializers.CharField(allow_null=True)
    status = serializers.CharField()
    builds = IndexBuildSerializer(many=True)


class WorkerImageRegisterSerializer(serializers.Serializer):
    storage_url = StrictCharField(max_length=2000)
    image_type = serializers.ChoiceField(choices=["query_temp"])
    product_code = StrictCharField(max_length=64)
    defect_code = StrictCharField(max_length=64, required=False, allow_blank=True, default="")


class WorkerImageRegisterResponseSerializer(serializers.Serializer):
    image_id = serializers.IntegerField()
    image_type = serializers.CharField()
    local_path = serializers.CharField()
    expires_at = serializers.DateTimeField()
