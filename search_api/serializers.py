from __future__ import annotations

from typing import Any

from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from indexing.models import GalleryType, IndexBuild
from search_api.focus import FOCUS_CHOICES, PRODUCT_FROM_BEST_MATCH, PRODUCT_FROM_IMAGE, PRODUCT_FROM_REQUEST
from simsearch_project.fields import StrictBooleanField, StrictCharField, StrictIntegerField


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
    focus = serializers.ChoiceField(
        choices=FOCUS_CHOICES,
        required=False,
        allow_blank=True,
        help_text=_(
            "Defect index: 'defect' searches by the photo's most anomalous region against its product's normal "
            "images, 'whole' by the whole photo. Default: the defect region where the product has an anomaly model."
        ),
    )

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
    match_confidence = serializers.FloatField(
        allow_null=True,
        min_value=0,
        max_value=1,
        help_text=_(
            "How far to trust this hit's defect type (product, for the normal index), 0 to 1: the share of "
            "right answers among the build's own leave-one-out matches of that type at least this strong. "
            "null for text queries and for builds made before calibration."
        ),
    )
    confident_match = serializers.BooleanField(
        allow_null=True,
        help_text=_("True when the score clears its type's calibrated threshold (match_confidence reaches it)."),
    )


class FocusRegionSerializer(serializers.Serializer):
    left = serializers.FloatField()
    top = serializers.FloatField()
    right = serializers.FloatField()
    bottom = serializers.FloatField()


class FocusSerializer(serializers.Serializer):
    mode = serializers.ChoiceField(choices=FOCUS_CHOICES, help_text=_("Which search answered."))
    reason = serializers.CharField(allow_blank=True, help_text=_("Why the whole photo was searched; empty otherwise."))
    product_code = serializers.CharField(allow_null=True)
    product_from = serializers.ChoiceField(
        choices=[PRODUCT_FROM_REQUEST, PRODUCT_FROM_IMAGE, PRODUCT_FROM_BEST_MATCH],
        allow_null=True,
        help_text=_("Where the product whose normal images describe the photo came from."),
    )
    region = FocusRegionSerializer(
        allow_null=True, help_text=_("The defect region found in the photo, as fractions of its width and height.")
    )


class SimilaritySearchResponseSerializer(serializers.Serializer):
    status = serializers.CharField()
    version = serializers.ChoiceField(choices=["v1", "v2"])
    query_image = serializers.CharField()
    index = IndexInfoSerializer()
    results = V2ResultSerializer(
        many=True, help_text=_("V1 answers carry image_path, similarity_score, product, defect.")
    )
    warning = serializers.CharField(required=False)
    no_confident_match = serializers.BooleanField(
        allow_null=True,
        help_text=_(
            "True when no result clears its type's calibrated threshold: the photo may show something the "
            "catalog does not have; have a person look at it. null when the answer is not calibrated."
        ),
    )
    focus = FocusSerializer(
        allow_null=True, help_text=_("V2 defect index only: the defect-region search (null for other indexes).")
    )


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


class QualityFigureSerializer(serializers.Serializer):
    value = serializers.FloatField(allow_null=True, help_text=_("The figure, 0 to 1; null when nothing was measured."))
    chance = serializers.FloatField(
        allow_null=True, help_text=_("What a search that ignores the picture scores on the same gallery.")
    )


class MapFigureSerializer(QualityFigureSerializer):
    queries = serializers.IntegerField(help_text=_("Queries with at least one relevant image (the others have no AP)."))


class MajorityClassSerializer(serializers.Serializer):
    label = serializers.CharField(allow_null=True)
    rate = serializers.FloatField(
        allow_null=True, help_text=_("Share of the most frequent label: what always answering it would score.")
    )


class ClassRecallSerializer(serializers.Serializer):
    label = serializers.CharField()
    queries = serializers.IntegerField()
    recall = serializers.FloatField(allow_null=True)
    chance = serializers.FloatField(allow_null=True)


class ConfusionSerializer(serializers.Serializer):
    labels = serializers.ListField(child=serializers.CharField())
    matrix = serializers.ListField(
        child=serializers.ListField(child=serializers.IntegerField()),
        help_text=_("Rows: true label; columns: the label of the nearest neighbour (same order as labels)."),
    )


class LabelQualitySerializer(serializers.Serializer):
    queries = serializers.IntegerField()
    classes = serializers.IntegerField()
    majority_class = MajorityClassSerializer()
    top1_accuracy = QualityFigureSerializer(help_text=_("Chance: the expected accuracy of a random neighbour."))
    top5_vote_accuracy = QualityFigureSerializer(
        help_text=_("Majority label of the 5 nearest. Chance: a vote of 5 random neighbours.")
    )
    map_at_10 = MapFigureSerializer(
        help_text=_("Relevant = same label. Chance: the expected mAP@10 of a random ranking.")
    )
    per_class = ClassRecallSerializer(many=True)
    confusion = ConfusionSerializer()


class QualityLabelsSerializer(serializers.Serializer):
    defect_type = LabelQualitySerializer(required=False, help_text=_("Defect index only."))
    product = LabelQualitySerializer()


class QualityFiguresSerializer(serializers.Serializer):
    main_label = serializers.ChoiceField(choices=["defect_type", "product"])
    labels = QualityLabelsSerializer()


class AdaptationSerializer(serializers.Serializer):
    requested = serializers.BooleanField()
    kept = serializers.BooleanField(required=False)
    reason = serializers.CharField(required=False, help_text=_("Why the projection was kept or not."))
    base_top1 = serializers.FloatField(
        required=False, allow_null=True, help_text=_("Held-out top-1 of the plain embeddings (5 folds).")
    )
    adapted_top1 = serializers.FloatField(
        required=False, allow_null=True, help_text=_("Held-out top-1 with the projection.")
    )
    alpha = serializers.FloatField(required=False, allow_null=True)
    dims = serializers.IntegerField(required=False, allow_null=True)
    seconds = serializers.FloatField(required=False)


class FocusQualitySerializer(serializers.Serializer):
    images = serializers.IntegerField(help_text=_("Defect images with a defect-region descriptor."))
    region = QualityFiguresSerializer(allow_null=True, help_text=_("Searched by their defect regions."))
    whole = QualityFiguresSerializer(allow_null=True, help_text=_("The same images searched by whole photos."))


class BuildQualitySerializer(serializers.Serializer):
    """indexing.quality's report: see README, Retrieval quality."""

    version = serializers.IntegerField()
    mode = serializers.CharField(help_text=_("leave_one_out (a build's own vectors) or held_out (labelled photos)."))
    image_type = serializers.ChoiceField(choices=GalleryType.choices)
    main_label = serializers.ChoiceField(
        choices=["defect_type", "product"], help_text=_("The label whose top-1 accuracy ranks builds.")
    )
    vector_count = serializers.IntegerField()
    query_count = serializers.IntegerField()
    sampled = serializers.BooleanField(help_text=_("True when a seeded sample of the vectors was the queries."))
    sample_seed = serializers.IntegerField(allow_null=True)
    duplicate_vectors = serializers.IntegerField(
        help_text=_("Vectors whose picture (content hash) an earlier vector has; left out of each other's searches.")
    )
    k = serializers.IntegerField()
    vote_k = serializers.IntegerField()
    labels = QualityLabelsSerializer()
    seconds = serializers.FloatField()
    adaptation = AdaptationSerializer(required=False, help_text=_("Catalog adaptation, when the rebuild asked for it."))
    base = QualityFiguresSerializer(
        required=False, allow_null=True, help_text=_("The plain embeddings' figures, when an adaptation was kept.")
    )
    focus = FocusQualitySerializer(
        required=False, help_text=_("Defect index: defect-region search against whole-photo search, same images.")
    )


@extend_schema_field(BuildQualitySerializer(allow_null=True))
class BuildQualityField(serializers.JSONField):
    """The stored figures as they were written (the schema above describes them)."""


class IndexBuildDetailSerializer(IndexBuildSerializer):
    quality = BuildQualityField(
        read_only=True,
        allow_null=True,
        help_text=_("Leave-one-out retrieval quality measured when the build was made; null for builds made before."),
    )

    class Meta(IndexBuildSerializer.Meta):
        fields = [*IndexBuildSerializer.Meta.fields, "quality"]


class IndexBuildActivateSerializer(serializers.Serializer):
    confirm = StrictBooleanField(
        required=False,
        default=False,
        help_text=_("Activate even when the build's top-1 accuracy is below the active build's."),
    )


class IndexBuildActivateConflictSerializer(serializers.Serializer):
    detail = serializers.CharField()
    code = serializers.CharField(help_text=_("worse_than_active, or not_ready for a build that is not ready."))
    build_id = serializers.IntegerField(required=False)
    active_build_id = serializers.IntegerField(required=False)
    label = serializers.CharField(required=False, help_text=_("defect_type or product: the figure compared."))
    build_top1 = serializers.FloatField(required=False)
    active_top1 = serializers.FloatField(required=False)


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
    adapt = StrictBooleanField(
        required=False,
        help_text=_(
            "Learn a projection of the embeddings from the catalog's labels (kept only when it helps on held-out "
            "pictures). Default: SIMSEARCH_ADAPT."
        ),
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
