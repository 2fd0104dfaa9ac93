"""Process-wide heavy objects, created on first use (after any fork), never at import."""

from __future__ import annotations

from django.conf import settings

from indexing.embedder import Embedder, get_embedder, resolve_device


def current_embedder() -> Embedder:
    """The embedder for the configured SIMSEARCH_MODEL / SIMSEARCH_PRETRAINED."""
    return get_embedder(
        model_name=settings.SIMSEARCH_MODEL,
        pretrained=settings.SIMSEARCH_PRETRAINED,
        device=resolve_device(settings.SIMSEARCH_DEVICE),
        threads=settings.SIMSEARCH_TORCH_THREADS or None,
    )
