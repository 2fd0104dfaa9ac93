"""Process-wide heavy objects, created on first use (after any fork), never at import."""

from __future__ import annotations

import threading

from django.conf import settings

from indexing.anomaly import PatchFeatureExtractor
from indexing.embedder import Embedder, WeightsUnavailable, get_embedder, resolve_device

FILE_IDENTITY_PREFIX = "file:sha256="


def require_weights_sha256(*, weights_identity: str, setting: str, value: str, expected: str) -> None:
    """Refuse loaded weights whose file is not the one `<setting>_SHA256` names (when it is set).
    `weights_identity` is the loaded model's `fingerprint_source["weights"]`."""
    if not expected:
        return
    actual = weights_identity.removeprefix(FILE_IDENTITY_PREFIX)
    if weights_identity.startswith(FILE_IDENTITY_PREFIX) and actual == expected.lower():
        return
    found = f"has sha256 {actual}" if weights_identity.startswith(FILE_IDENTITY_PREFIX) else "is not a file"
    raise WeightsUnavailable(
        f"{setting}={value} {found}, but {setting}_SHA256 expects {expected.lower()}. Copy the file that "
        f"`manage.py fetch_weights` wrote (check it with `sha256sum -c SHA256SUMS` in its folder), or set "
        f"{setting}_SHA256 to the hash of the file you mean to use."
    )


def current_embedder() -> Embedder:
    """The embedder for the configured SIMSEARCH_MODEL / SIMSEARCH_PRETRAINED."""
    embedder = get_embedder(
        model_name=settings.SIMSEARCH_MODEL,
        pretrained=settings.SIMSEARCH_PRETRAINED,
        device=resolve_device(settings.SIMSEARCH_DEVICE),
        threads=settings.SIMSEARCH_TORCH_THREADS or None,
    )
    require_weights_sha256(
        weights_identity=embedder.fingerprint_source["weights"],
        setting="SIMSEARCH_PRETRAINED",
        value=settings.SIMSEARCH_PRETRAINED,
        expected=settings.SIMSEARCH_PRETRAINED_SHA256,
    )
    return embedder


_extractors: dict[tuple[str, str, int, str, str], PatchFeatureExtractor] = {}
_extractors_lock = threading.Lock()


def current_patch_extractor() -> PatchFeatureExtractor:
    """The anomaly check's patch-feature extractor for SIMSEARCH_ANOMALY_* (one per process)."""
    device = resolve_device(settings.SIMSEARCH_DEVICE)
    key = (
        settings.SIMSEARCH_ANOMALY_BACKBONE,
        settings.SIMSEARCH_ANOMALY_WEIGHTS,
        settings.SIMSEARCH_ANOMALY_INPUT_SIZE,
        device,
        settings.SIMSEARCH_ANOMALY_PRECISION,
    )
    with _extractors_lock:
        if key not in _extractors:
            _extractors[key] = PatchFeatureExtractor(
                backbone=key[0],
                weights=key[1],
                input_size=key[2],
                device=device,
                threads=settings.SIMSEARCH_TORCH_THREADS or None,
                precision=key[4],
            )
        extractor = _extractors[key]
    require_weights_sha256(
        weights_identity=extractor.fingerprint_source["weights"],
        setting="SIMSEARCH_ANOMALY_WEIGHTS",
        value=settings.SIMSEARCH_ANOMALY_WEIGHTS,
        expected=settings.SIMSEARCH_ANOMALY_WEIGHTS_SHA256,
    )
    return extractor
