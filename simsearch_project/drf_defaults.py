"""Renderer and pagination classes named in REST_FRAMEWORK settings.

They live apart from `simsearch_project.api` on purpose: `rest_framework.views` reads
DEFAULT_RENDERER_CLASSES when it is first imported, so a module that both defines a renderer and
imports `rest_framework.views` breaks whichever process happens to resolve the setting first
(`manage.py qcluster` runs DRF's pagination check before any URLconf is loaded). Keep this module
free of `rest_framework.views` and of anything that imports it.
"""

from __future__ import annotations

from rest_framework import pagination
from rest_framework.renderers import JSONRenderer


class PageNumberPagination(pagination.PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 500


class UTF8JSONRenderer(JSONRenderer):
    """JSON with non-ASCII text (Korean defect names) written as UTF-8, not \\u escapes."""

    ensure_ascii = False
    charset = "utf-8"
