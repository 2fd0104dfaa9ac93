"""Functions that read index data."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import QuerySet

from catalog.models import Image
from indexing.models import BuildStatus, GalleryType, IndexBuild, IndexEngine, ProductAnomalyModel


@dataclass(frozen=True)
class GalleryRow:
    image_id: int
    file_name: str
    sha256: str
    image_type: str
    product_code: str
    product_name: str
    defect_code: str | None
    defect_name_ko: str | None
    defect_name_en: str | None

    def record(self) -> dict:
        """The metadata.json record: the stored fields of a search result."""
        return {
            "image_id": self.image_id,
            "local_path": self.file_name,
            "product_code": self.product_code,
            "product_name": self.product_name,
            "defect_code": self.defect_code,
            "defect_name": self.defect_name_ko,
            "defect_name_en": self.defect_name_en,
            "image_type": self.image_type,
            "sha256": self.sha256,
        }


def gallery_rows(*, image_type: str) -> list[GalleryRow]:
    """Every catalog image of `image_type` with its product and defect type: one JOIN query."""
    images = (
        Image.objects.filter(image_type=image_type)
        .select_related("product", "defect_type")
        .only(
            "id",
            "file",
            "sha256",
            "image_type",
            "product__product_code",
            "product__product_name",
            "defect_type__defect_code",
            "defect_type__defect_name_ko",
            "defect_type__defect_name_en",
        )
        .order_by("id")
    )
    return [
        GalleryRow(
            image_id=image.pk,
            file_name=image.file.name,
            sha256=image.sha256,
            image_type=image.image_type,
            product_code=image.product.product_code,
            product_name=image.product.product_name,
            defect_code=image.defect_type.defect_code if image.defect_type else None,
            defect_name_ko=image.defect_type.defect_name_ko if image.defect_type else None,
            defect_name_en=image.defect_type.defect_name_en if image.defect_type else None,
        )
        for image in images.iterator(chunk_size=2000)
    ]


def build_list() -> QuerySet[IndexBuild]:
    return IndexBuild.objects.select_related("requested_by")


@dataclass(frozen=True)
class ActiveBuild:
    build_id: int
    manifest_sha256: str
    artifact_prefix: str


def active_builds() -> dict[tuple[str, str], ActiveBuild]:
    """(engine, image_type) -> the active build; one small query (serving processes poll it)."""
    rows = IndexBuild.objects.filter(is_active=True, status=BuildStatus.READY).values_list(
        "engine", "image_type", "id", "manifest_sha256", "artifact_prefix"
    )
    return {
        (engine, image_type): ActiveBuild(build_id, sha, prefix) for engine, image_type, build_id, sha, prefix in rows
    }


def builds_existing(build_ids: list[int]) -> set[int]:
    """Which of these build ids still have a row (pruned builds have none)."""
    return set(IndexBuild.objects.filter(pk__in=build_ids).values_list("pk", flat=True))


def serving_engine(use_index_v2: bool) -> str:
    return IndexEngine.V2 if use_index_v2 else IndexEngine.V1


def build_artifact_prefix(build_id: int) -> str | None:
    return IndexBuild.objects.filter(pk=build_id).values_list("artifact_prefix", flat=True).first()


def serving_anomaly_model(*, product_id: int) -> ProductAnomalyModel | None:
    """The product's anomaly model in the active normal (V2) build, if it has one."""
    return (
        ProductAnomalyModel.objects.filter(
            product_id=product_id,
            build__is_active=True,
            build__engine=IndexEngine.V2,
            build__image_type=GalleryType.NORMAL,
        )
        .select_related("build")
        .first()
    )
