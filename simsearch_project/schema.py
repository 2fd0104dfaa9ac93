"""The OpenAPI schema states every error status the API can answer, in one place.

Every view answers through the same exception handler (`simsearch_project.api`) and the same
middleware, so the error answers are the same everywhere: documenting them per view would
repeat the list on each and miss some. Views still declare their own 2xx answers and any error
with a shape of its own (a 409 with `existing_image_id`, say); those win over the defaults."""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers
from rest_framework.permissions import AllowAny

from simsearch_project.fields import StrictModelSerializer

WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
BODY_METHODS = {"POST", "PUT", "PATCH"}


class ErrorSerializer(serializers.Serializer):
    """The body of every error answer."""

    detail = serializers.CharField(help_text=_("What is wrong, in words for a person."))
    code = serializers.CharField(required=False, help_text=_("A machine-readable reason, where there is one."))
    errors = serializers.DictField(required=False, help_text=_("Field name -> messages, for invalid input."))


# Answered by the HTTP server in front of Django (gunicorn, a proxy), as an HTML page.
_URI_TOO_LONG = {
    "description": _("The URL (path and query string) is longer than the HTTP server accepts."),
    "content": {"text/html": {"schema": {"type": "string"}}},
}


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(response=ErrorSerializer, description=description)


class SimsearchAutoSchema(AutoSchema):
    def _map_serializer(self, serializer: Any, direction: str, bypass_extensions: bool = False) -> dict[str, Any]:
        schema = super()._map_serializer(serializer, direction, bypass_extensions)
        if direction == "request" and isinstance(serializer, StrictModelSerializer):
            schema["additionalProperties"] = False
        return schema

    def _insert_field_validators(self, field: Any, schema: dict[str, Any]) -> None:
        super()._insert_field_validators(field, schema)
        # DRF trims a CharField's value before checking it is not blank, so "\v" is refused as
        # blank: the schema says an input needs one character that is not whitespace (Python's
        # \S is the complement of what str.strip removes). After the validators, so that a
        # field's own RegexValidator pattern (product codes) stays the one stated.
        if (
            isinstance(field, serializers.CharField)
            and not field.read_only
            and field.trim_whitespace
            and not field.allow_blank
            and schema.get("type") == "string"
            and "pattern" not in schema
        ):
            schema["pattern"] = r"\S"

    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        for code, description in self._error_statuses().items():
            if code not in responses:
                responses[code] = self._get_response_for_code(_error(description), code, direction=direction)
        responses.setdefault("414", _URI_TOO_LONG)
        return responses

    def _error_statuses(self) -> dict[str, str]:
        view = self.view
        statuses = {"400": gettext("Invalid input; the body names the field and the problem.")}
        if not all(isinstance(p, AllowAny) for p in view.get_permissions()):
            statuses["401"] = gettext("No credentials, or a token that is not valid.")
            statuses["403"] = gettext("Signed in, but without the permission this needs.")
        statuses["404"] = gettext("No such object (an id, a code, or an object in storage).")
        if self.method in WRITE_METHODS:
            statuses["409"] = gettext("Conflicts with the current state (a duplicate, a reference still in use, ...).")
        if self.method in BODY_METHODS:
            statuses["413"] = gettext("The request body is larger than the server accepts.")
            statuses["415"] = gettext("The request body is in a media type this operation does not read.")
        if getattr(view, "throttle_classes", None):
            statuses["429"] = gettext("Too many requests; retry after the number of seconds in Retry-After.")
        statuses["503"] = gettext("The database, the storage, the model or the index is not available; retry later.")
        return statuses
