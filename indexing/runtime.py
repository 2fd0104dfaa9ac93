"""Process-wide heavy objects, created on first use (after any fork), never at import."""

from __future__ import annotations

import threading

from django.conf import settings

from indexing.anomaly import PatchFeatureExtractor
from indexing.embedder import Embedder, WeightsUnavailable, get_embedder, resolve_device


def current_embedder() -> Embedder:
    """The embedder for the configured SIMSEARCH_MODEL / SIMSEARCH_PRETRAINED."""
    return get_embedder(
        model_name=settings.SIMSEARCH_MODEL,
        pretrained=settings.SIMSEARCH_PRETRAINED,
        device=resolve_device(settings.SIMSEARCH_DEVICE),
        threads=settings.SIMSEARCH_TORCH_THREADS or None,
    )


_extractors: dict[tuple[str, str, int, str], PatchFeatureExtractor] = {}
_extractors_lock = threading.Lock()


def current_patch_extractor() -> PatchFeatureExtractor:
    """The anomaly check's patch-feature extractor for SIMSEARCH_ANOMALY_* (one per process)."""
    device = resolve_device(settings.SIMSEARCH_DEVICE)
    key = (
        settings.SIMSEARCH_ANOMALY_BACKBONE,
        settings.SIMSEARCH_ANOMALY_WEIGHTS,
        settings.SIMSEARCH_ANOMALY_INPUT_SIZE,
        device,
    )
    with _extractors_lock:
        if key not in _extractors:
            _extractors[key] = PatchFeatureExtractor(
                backbone=key[0],
                weights=key[1],
                input_size=key[2],
                device=device,
                threads=settings.SIMSEARCH_TORCH_THREADS or None,
            )
        extractor = _extractors[key]
    expected = settings.SIMSEARCH_ANOMALY_WEIGHTS_SHA256
    if expected and extractor.fingerprint_source["weights"] != f"file:sha256={expected.lower()}":
        raise WeightsUnavailable(
            f"SIMSEARCH_ANOMALY_WEIGHTS ({settings.SIMSEARCH_ANOMALY_WEIGHTS}) is not the file "
            f"SIMSEARCH_ANOMALY_WEIGHTS_SHA256 names ({expected}): copy the right checkpoint or fix the setting."
        )
    return extractor
