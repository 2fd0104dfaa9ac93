"""Renderer and pagination classes named in REST_FRAMEWORK settings.

They live apart from `simsearch_project.api` on purpose: `rest_framework.views` reads
DEFAULT_RENDERER_CLASSES when it is first imported, so a module that both defines a renderer and
imports `rest_framework.views` breaks whichever process happens to resolve the setting first
(`manage.py qcluster` runs DRF's pagination check before any URLconf is loaded). Keep this module
free of `rest_framework.views` and of anything that imports it.
"""

from __future__ import annotations

import json
from typing import Any

from rest_framework import pagination
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer

from simsearch_project.json_input import BoundedJSONDecoder


class PageNumberPagination(pagination.PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 500


class UTF8JSONRenderer(JSONRenderer):
    """JSON with non-ASCII text (Korean defect names) written as UTF-8, not \\u escapes."""

    ensure_ascii = False
    charset = "utf-8"


class BoundedJSONParser(JSONParser):
    """DRF's JSON parser with bounded nesting: too deep or not UTF-8 is a 400, never a 500."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> Any:
        encoding = (parser_context or {}).get("encoding", "utf-8")
        try:
            text = stream.read().decode(encoding) if stream is not None else ""
            return json.loads(text, cls=BoundedJSONDecoder)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are
            raise ParseError(f"JSON parse error - {exc}") from None
