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
from urllib.parse import unquote_to_bytes

from django.http import QueryDict
from django.utils.translation import gettext
from rest_framework import pagination
from rest_framework.exceptions import ParseError, ValidationError
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.renderers import JSONRenderer

from simsearch_project.json_input import BoundedJSONDecoder


class PageNumberPagination(pagination.PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 500

    def get_page_size(self, request: Any) -> int | None:
        """DRF falls back to the default for a page_size it cannot read; say so instead (400)."""
        message = gettext("A whole number from 1 to %(max)s.") % {"max": self.max_page_size}
        _positive_integer(request, self.page_size_query_param, message)
        if int(request.query_params.get(self.page_size_query_param) or 1) > self.max_page_size:
            raise ValidationError({self.page_size_query_param: [message]})
        return super().get_page_size(request)

    def get_page_number(self, request: Any, paginator: Any) -> Any:
        """Page numbers only (DRF also takes "last"): what the schema says, and all a client needs."""
        _positive_integer(request, self.page_query_param, gettext("A page number: a whole number from 1."))
        return super().get_page_number(request, paginator)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            parameter["schema"]["minimum"] = 1
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"]["maximum"] = self.max_page_size
        return parameters


def _positive_integer(request: Any, name: str, message: str) -> None:
    raw = request.query_params.get(name)
    if raw is not None and not (raw.isascii() and raw.isdigit() and int(raw) > 0):
        raise ValidationError({name: [message]})


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
            raise ParseError(gettext("JSON parse error - %(detail)s") % {"detail": exc}) from None


class StrictFormParser(FormParser):
    """DRF's urlencoded form parser, refusing bytes that are not UTF-8 (400) where Django would
    read them as replacement characters ("\ufffd") and carry on."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> Any:
        raw = stream.read() if stream is not None else b""
        for pair in raw.split(b"&"):
            try:
                unquote_to_bytes(pair.replace(b"+", b" ")).decode("utf-8")
            except UnicodeDecodeError:
                raise ParseError(gettext("Form parse error - the form is not valid UTF-8.")) from None
        return QueryDict(raw, encoding=(parser_context or {}).get("encoding", "utf-8"))


class StrictMultiPartParser(MultiPartParser):
    """DRF's multipart parser, refusing field names and values that were not UTF-8. Django decodes
    them with replacement characters and gives no other sign, so a U+FFFD in a field is taken for
    bytes that were not UTF-8: no client of this API has a reason to send that character. Django
    also skips parts without a field name in silence: a body with content but not one field or
    file is refused, rather than read as an empty form (which would mean "all defaults")."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> Any:
        parsed = super().parse(stream, media_type, parser_context)
        for name, values in parsed.data.lists():
            if "\ufffd" in name or any("\ufffd" in value for value in values):
                raise ParseError(gettext("Multipart form parse error - a field is not valid UTF-8."))
        if not parsed.data and not parsed.files:
            request = (parser_context or {}).get("request")
            length = int((request.META.get("CONTENT_LENGTH") if request is not None else 0) or 0)
            boundary = (media_type or "").partition("boundary=")[2].strip('"; ')
            if length > len(boundary) + 8:  # more than the closing "--boundary--\r\n"
                raise ParseError(gettext("Multipart form parse error - a part has no field name."))
        return parsed
