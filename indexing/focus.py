"""Defect-focused search: describe a defect photo by its most anomalous patches. Django-free.

A defect photo shows a whole part with a small defect on it, so a whole-image embedding mostly
says which product it is. Here a photo is described against the anomaly model of its product
(indexing/anomaly.py): the `patches` patch features farthest from the product's normal patches
(the memory bank) are averaged into one descriptor, which describes the defect region and little
else. Defect images are searched by these descriptors, centred on their mean (ReLU features
are all positive: uncentred cosines all sit near 1) and compared by cosine in FAISS.

Measured (untrained ResNet-18 layer2+3 at 256 px; 2 generated surfaces x 5 defect types, 12
photos each, leave-one-out top-1 defect type): 4 patches 0.48, 8 patches 0.42, 16 patches 0.39,
against 0.21 for the untrained ViT-B-32 whole-image embedding and 0.30 for the same ResNet
features pooled over the whole photo. On held-out queries (benchmarks/retrieval_quality.py):
0.50 against 0.28, chance 0.18.

The descriptors of a build only make sense against the anomaly models they were made with: a
defect build keeps copies of those models and describes queries with them."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import cached_property

import faiss
import numpy as np

from indexing import vector_index
from indexing.anomaly import AnomalyModel, IncompatibleAnomalyModel

FOCUS_PATCHES = 4
FOCUS_FORMAT = "simsearch-focus-v1"
FOCUS_FILE = "focus.npz"


@dataclass(frozen=True)
class DefectRegion:
    descriptor: np.ndarray  # float32 [dim]: mean feature of the most anomalous patches
    box: tuple[float, float, float, float]  # (left, top, right, bottom), fractions of the photo
    peak_distance: float  # the largest patch distance to the normal bank


def defect_region(model: AnomalyModel, features: np.ndarray, *, patches: int = FOCUS_PATCHES) -> DefectRegion:
    """The defect region of one photo's patch features ([h, w, dim], PatchFeatureExtractor.extract)
    against its product's model. The box spans the chosen patches (the photo is squashed to a
    square for the features, so grid fractions are photo fractions)."""
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 3 or features.shape[:2] != model.grid_shape or features.shape[2] != model.dim:
        raise IncompatibleAnomalyModel(
            f"features of shape {features.shape} do not fit a model of grid {model.grid_shape} and dim {model.dim}"
        )
    h, w, dim = features.shape
    flat = np.ascontiguousarray(features.reshape(h * w, dim))
    squared, _ = model.patch_index.search(flat, 1)
    count = max(1, min(patches, h * w))
    chosen = np.argsort(-squared[:, 0], kind="stable")[:count]
    rows, cols = np.divmod(chosen, w)
    return DefectRegion(
        descriptor=flat[chosen].mean(axis=0),
        box=(float(cols.min() / w), float(rows.min() / h), float((cols.max() + 1) / w), float((rows.max() + 1) / h)),
        peak_distance=float(np.sqrt(max(float(squared[chosen[0], 0]), 0.0))),
    )


@dataclass(frozen=True, eq=False)
class FocusDescriptors:
    """The defect-region descriptors of a defect build's images. Serialise with to_bytes (.npz)."""

    ids: np.ndarray  # int64 [n]: catalog image ids (rows of the build's index)
    descriptors: np.ndarray  # float16 [n, dim]
    boxes: np.ndarray  # float32 [n, 4]: each image's region, fractions of the photo
    patches: int
    feature_fingerprint: str

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.descriptors.ndim != 2 or len(self.descriptors) != n or self.boxes.shape != (n, 4):
            raise ValueError("focus arrays do not agree in shape")

    @classmethod
    def from_regions(
        cls, ids: list[int], regions: list[DefectRegion], *, patches: int, feature_fingerprint: str
    ) -> FocusDescriptors:
        dim = len(regions[0].descriptor) if regions else 0
        return cls(
            ids=np.asarray(ids, dtype=np.int64),
            descriptors=np.array([r.descriptor for r in regions], dtype=np.float16).reshape(len(regions), dim),
            boxes=np.array([r.box for r in regions], dtype=np.float32).reshape(len(regions), 4),
            patches=patches,
            feature_fingerprint=feature_fingerprint,
        )

    @cached_property
    def center(self) -> np.ndarray:
        return self.descriptors.astype(np.float32).mean(axis=0)

    def centred(self, descriptors: np.ndarray) -> np.ndarray:
        """Descriptors as searched: minus the build's mean (vector_index normalises them)."""
        return np.asarray(descriptors, dtype=np.float32) - self.center

    @cached_property
    def index(self) -> faiss.Index:
        return vector_index.build_index(self.centred(self.descriptors), self.ids)

    def search(self, region: DefectRegion, k: int, *, allowed_ids: np.ndarray | None = None) -> list[tuple[int, float]]:
        return vector_index.search(self.index, self.centred(region.descriptor), k, allowed_ids=allowed_ids)

    def to_bytes(self) -> bytes:
        meta = {"format": FOCUS_FORMAT, "patches": self.patches, "feature_fingerprint": self.feature_fingerprint}
        buffer = io.BytesIO()
        np.savez(
            buffer,
            meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8),
            ids=self.ids,
            descriptors=self.descriptors,
            boxes=self.boxes,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> FocusDescriptors:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                meta = json.loads(archive["meta"].tobytes())
                ids, descriptors, boxes = archive["ids"], archive["descriptors"], archive["boxes"]
        except Exception as exc:
            raise ValueError(f"not a focus descriptor file: {exc}") from exc
        if meta.get("format") != FOCUS_FORMAT:
            raise ValueError(f"unknown focus descriptor format {meta.get('format')!r}")
        return cls(
            ids=ids.astype(np.int64, copy=False),
            descriptors=descriptors.astype(np.float16, copy=False),
            boxes=boxes.astype(np.float32, copy=False),
            patches=int(meta["patches"]),
            feature_fingerprint=str(meta["feature_fingerprint"]),
        )
