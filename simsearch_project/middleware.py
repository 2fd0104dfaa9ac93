from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse


def api_body_size_limit(get_response: Callable[[HttpRequest], HttpResponse]) -> Callable[[HttpRequest], HttpResponse]:
    """Refuse oversized /api/ bodies before anything reads them (413 with a JSON reason)."""

    def middleware(request: HttpRequest) -> HttpResponse:
        if request.path.startswith("/api/"):
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                return JsonResponse({"detail": "Invalid Content-Length header."}, status=400)
            limit = settings.SIMSEARCH_MAX_REQUEST_BYTES
            if length > limit:
                return JsonResponse(
                    {"detail": f"The request body is {length} bytes; the limit is {limit} bytes.", "code": "too_large"},
                    status=413,
                )
        return get_response(request)

    return middleware
