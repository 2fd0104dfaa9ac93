from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.translation import gettext


def _body_limit(request: HttpRequest, length: int) -> int:
    """The largest body this request may carry: the API's, staff's in the admin, or a form's."""
    if request.path_info.startswith("/api/"):
        return settings.SIMSEARCH_MAX_REQUEST_BYTES
    limit = settings.SIMSEARCH_MAX_FORM_REQUEST_BYTES
    # The session user is looked up only for a body too big for a form, not on every request.
    if length > limit and request.path_info.startswith("/admin/"):
        user = getattr(request, "user", None)
        if user is not None and user.is_active and user.is_staff:
            return settings.SIMSEARCH_MAX_ADMIN_REQUEST_BYTES
    return limit


def request_body_size_limit(
    get_response: Callable[[HttpRequest], HttpResponse],
) -> Callable[[HttpRequest], HttpResponse]:
    """Refuse an oversized body from its Content-Length, before anything reads it (413).

    Sits after AuthenticationMiddleware so signed-in staff get the admin's bulk-upload cap and
    everyone else a small one. Under WSGI (gunicorn) Django reads no more than Content-Length
    bytes, and none without the header, so the header is the whole story. /api/ answers JSON like
    the rest of the API; other paths plain text.
    """

    def middleware(request: HttpRequest) -> HttpResponse:
        is_api = request.path_info.startswith("/api/")
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if length < 0:
            message = gettext("Invalid Content-Length header.")
            if is_api:
                return JsonResponse({"detail": message}, status=400)
            return HttpResponse(message, status=400, content_type="text/plain; charset=utf-8")
        limit = _body_limit(request, length)
        if length > limit:
            message = gettext("The request body is %(length)s bytes; the limit is %(limit)s bytes.") % {
                "length": length,
                "limit": limit,
            }
            if is_api:
                return JsonResponse({"detail": message, "code": "too_large"}, status=413)
            return HttpResponse(
                f"413 {gettext('Request body too large.')} {message}\n",
                status=413,
                content_type="text/plain; charset=utf-8",
            )
        return get_response(request)

    return middleware
