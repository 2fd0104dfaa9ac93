"""Defect-focused search of the V2 defect index (indexing/focus.py): the query photo is described
by its most anomalous patches against its product's anomaly model, copied into the defect build,
and defect images are searched by the same description. Whole-image search is the fallback, and
the answer says which mode answered and why."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from django.utils.translation import gettext as _

from indexing.anomaly import PatchFeatureExtractor
from indexing.artifacts import LoadedIndex
from indexing.focus import defect_region
from search_api.index_cache import index_cache
from simsearch_project.errors import safe_reason

logger = logging.getLogger(__name__)

FOCUS_DEFECT = "defect"
FOCUS_WHOLE = "whole"
FOCUS_CHOICES = (FOCUS_DEFECT, FOCUS_WHOLE)

# Where the product whose normal images describe the query came from.
PRODUCT_FROM_REQUEST = "request"  # product_code of the request
PRODUCT_FROM_IMAGE = "image"  # the catalog image queried by image_id
PRODUCT_FROM_BEST_MATCH = "best_match"  # the best whole-image match


@dataclass(frozen=True)
class FocusInfo:
    mode: str  # FOCUS_DEFECT or FOCUS_WHOLE: which search answered
    reason: str = ""  # why whole-image answered (empty when asked for, or when defect answered)
    product_code: str | None = None
    product_from: str | None = None
    region: tuple[float, float, float, float] | None = None  # (left, top, right, bottom), photo fractions

    @property
    def region_percent(self) -> dict[str, int] | None:
        """The region as whole percentages of the photo (left, top, width, height): the console's box."""
        if self.region is None:
            return None
        left, top, right, bottom = (round(100 * value) for value in self.region)
        return {"left": left, "top": top, "width": right - left, "height": bottom - top}


@dataclass(frozen=True)
class FocusAnswer:
    info: FocusInfo
    hits: list[tuple[int, float]] | None = None  # None: keep the whole-image hits


def focused_search(
    *,
    loaded: LoadedIndex,
    image: bytes | None,
    requested: str | None,
    product_code: str | None,
    product_from: str | None,
    whole_hits: list[tuple[int, float]],
    k: int,
    allowed_ids: np.ndarray | None,
    extractor: Callable[[], PatchFeatureExtractor],
) -> FocusAnswer:
    """Answer a V2 defect-index query by its defect region when the build and the product allow
    it (`requested`: FOCUS_DEFECT, FOCUS_WHOLE or None for the default, defect where possible).
    `k`: hits to ask FAISS for (the caller keeps one per picture)."""
    if requested == FOCUS_WHOLE:
        return FocusAnswer(FocusInfo(FOCUS_WHOLE))
    if image is None:
        return FocusAnswer(FocusInfo(FOCUS_WHOLE, _("A text query is searched whole-image.")))
    focus = loaded.manifest.get("focus") or {}
    if "file" not in focus:
        return FocusAnswer(
            FocusInfo(
                FOCUS_WHOLE,
                _(
                    "This defect index (build %(build)s) has no defect-region descriptors: build the normal index, "
                    "then the defect index."
                )
                % {"build": loaded.build_id},
            )
        )
    if product_code is None and whole_hits:
        product_code = loaded.records[whole_hits[0][0]]["product_code"]
        product_from = PRODUCT_FROM_BEST_MATCH
    if product_code is None:
        return FocusAnswer(FocusInfo(FOCUS_WHOLE, _("No product to compare the photo with.")))
    if product_code not in focus.get("products", []):
        return FocusAnswer(
            FocusInfo(
                FOCUS_WHOLE,
                _(
                    "Product “%(code)s” had no anomaly model when this defect index was built (it needs enough "
                    "normal images); searched whole-image."
                )
                % {"code": product_code},
                product_code,
                product_from,
            )
        )
    try:
        model = index_cache.anomaly_model(loaded, product_code)
        descriptors = index_cache.focus_descriptors(loaded)
        region = defect_region(model, extractor().extract([image])[0], patches=descriptors.patches)
    except Exception as exc:  # a file gone or altered, features of other settings: whole-image answers
        logger.warning("Defect-focused search fell back to whole-image: %s", safe_reason(exc))
        return FocusAnswer(
            FocusInfo(
                FOCUS_WHOLE,
                _("The defect-region search could not run (%(reason)s); searched whole-image.")
                % {"reason": safe_reason(exc)},
                product_code,
                product_from,
            )
        )
    hits = descriptors.search(region, k, allowed_ids=allowed_ids)
    return FocusAnswer(FocusInfo(FOCUS_DEFECT, "", product_code, product_from, region.box), hits)
