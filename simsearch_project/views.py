from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    """The site root: where a new user finds the admin, the API docs and the health checks.
    It shows only fixed links, so anonymous visitors may see it (the linked pages check access)."""
    return render(request, "home.html")
