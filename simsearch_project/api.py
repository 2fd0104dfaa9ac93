"""HTTP glue shared by every API: one exception handler and JSON error pages under /api/.
(The renderer and pagination classes are in `drf_defaults`, which says why.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError, OperationalError, connection
from django.db.models import ProtectedError, RestrictedError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.functional import Promise
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from simsearch_project.errors import ServiceError


def _django_validation_payload(exc: DjangoValidationError) -> dict[str, Any]:
    if hasattr(exc, "error_dict"):
        errors = {field: [str(m) for e in errs for m in e.messages] for field, errs in exc.error_dict.items()}
        first = next(iter(errors.values()), [gettext("Invalid input.")])
        return {"detail": first[0], "errors": errors}
    return {
        "detail": " ".join(exc.messages),
        "errors": {"non_field_errors": exc.messages},
    }


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DjangoValidationError):
        return Response(_django_validation_payload(exc), status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, ServiceError):
        return Response({"detail": exc.message, "code": exc.code, **exc.details}, status=exc.status_code)
    if isinstance(exc, (OperationalError, InterfaceError)):
        # A dropped connection must not stay broken for the next request of this worker.
        connection.close()
        return Response(
            {"detail": gettext("The database is unavailable; retry in a moment."), "code": "database_unavailable"},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
        )
    if isinstance(exc, (ProtectedError, RestrictedError)):
        return Response(
            {
                "detail": gettext("This object is still referenced by other records; remove those first."),
                "code": "protected",
            },
            status=status.HTTP_409_CONFLICT,
        )
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(exc, exceptions.ValidationError) and isinstance(response.data, dict):
        if "detail" not in response.data:
            first = next(iter(response.data.values()), None)
            message = first[0] if isinstance(first, list) and first else str(first)
            response.data = {"detail": str(message), "errors": response.data}
    elif response is not None and isinstance(exc, exceptions.ValidationError) and isinstance(response.data, list):
        response.data = {
            "detail": " ".join(str(m) for m in response.data),
            "errors": {"non_field_errors": response.data},
        }
    collision = isinstance(exc, exceptions.ValidationError) and _only_codes(exc.get_codes(), {"unique"})
    if response is not None and collision:
        # Well-formed input that collides with a row that exists (a product code taken): a conflict.
        response.status_code = status.HTTP_409_CONFLICT
        response.data["code"] = "conflict"
    return response


def _only_codes(codes: Any, allowed: set[str]) -> bool:
    """True when every error code in DRF's nested `get_codes()` answer is one of `allowed`."""
    found: set[str] = set()
    pending = [codes]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        else:
            found.add(str(item))
    return bool(found) and found <= allowed


def _json_under_api(
    status_code: int, message: Promise, default_view: Callable[..., HttpResponse]
) -> Callable[..., HttpResponse]:
    """An error view that answers JSON for /api/ paths and Django's own page elsewhere."""

    def view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.path.startswith("/api/"):
            return JsonResponse({"detail": str(message)}, status=status_code)  # in the request's language
        return default_view(request, *args, **kwargs)

    return view


bad_request = _json_under_api(400, _("Bad request."), defaults.bad_request)
permission_denied = _json_under_api(403, _("Permission denied."), defaults.permission_denied)
page_not_found = _json_under_api(404, _("Not found."), defaults.page_not_found)
server_error = _json_under_api(500, _("Internal server error."), defaults.server_error)
