"""The site root is a small public page that leads a new user to the admin, the API docs and the
health checks, and runs under the Content-Security-Policy like every other page."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db


def test_root_links_admin_docs_and_health_for_anonymous_visitors(client):
    response = client.get("/")
    assert response.status_code == 200
    page = response.content.decode()
    links = set(re.findall(r'href="([^"]+)"', page))
    expected = ["/admin/", "/admin/search/", "/api/docs/", "/api/redoc/", "/healthz", "/readyz"]
    assert set(expected) <= links
    for path in expected:
        assert client.get(path).status_code in (200, 302, 503), path  # each link leads somewhere real
    # Strict CSP: no inline script anywhere on the page.
    assert "script-src 'self'" in response["Content-Security-Policy"]
    assert re.search(r"<script(?![^>]*\bsrc=)", page) is None


def test_root_shows_nothing_private(client, staff_user):
    anonymous = client.get(reverse("home")).content
    client.force_login(staff_user)
    assert client.get(reverse("home")).content == anonymous


def test_root_refuses_writes(client):
    assert client.post("/").status_code == 405
