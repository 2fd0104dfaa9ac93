"""Offline API docs, the Content-Security-Policy, admin login throttling and request body caps."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from django.test import Client
from django.urls import reverse

from catalog.models import Image
from tests.conftest import running_gunicorn
from tests.helpers import image_bytes

ROOT = Path(__file__).resolve().parent.parent


class _Assets(HTMLParser):
    """The URLs a page loads (script src, link href), and how many scripts are inline."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script":
            if values.get("src") is not None:
                self.urls.append(values["src"] or "")
            elif values.get("type") != "application/json":  # data, never executed
                self.inline_scripts += 1
        elif tag == "link" and values.get("href") is not None:
            self.urls.append(values["href"] or "")
        for name in values:
            assert not name.startswith("on"), f"inline event handler {name}= on <{tag}>"


def page_assets(html: str) -> _Assets:
    parser = _Assets()
    parser.feed(html)
    return parser


def csp_directives(header: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for part in header.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


# --- Offline docs ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/docs/", "/api/redoc/"])
def test_api_docs_load_only_same_origin_assets_that_exist(client: Client, path: str) -> None:
    page = client.get(path)
    assert page.status_code == 200
    assets = page_assets(page.content.decode())
    assert assets.urls, "the page loads its viewer from somewhere"
    for url in assets.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, f"{path} loads {url} from another host"
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert b"".join(asset.streaming_content if asset.streaming else [asset.content])
    # Swagger UI's start-up code is a script file of its own (see urls.py), so the CSP holds.
    assert assets.inline_scripts == 0


def test_swagger_start_up_script_is_javascript_that_points_at_the_schema(client: Client) -> None:
    script_url = next(u for u in page_assets(client.get("/api/docs/").content.decode()).urls if "script" in u)
    script = client.get(script_url)
    assert script.status_code == 200 and script["Content-Type"].startswith("application/javascript")
    assert b"SwaggerUIBundle(" in script.content and reverse("schema").encode() in script.content


# --- Content-Security-Policy -----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/admin/login/", "/api/docs/", "/api/index/status/", "/api/"])
def test_every_page_has_a_strict_content_security_policy(client: Client, path: str) -> None:
    response = client.get(path)
    policy = csp_directives(response["Content-Security-Policy"])
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]  # no 'unsafe-inline', no 'unsafe-eval', no other host
    assert policy["img-src"] == ["'self'", "data:"]  # local storage: no object store to allow
    assert policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]


def test_with_s3_storage_images_may_come_from_the_object_store(tmp_path: Path) -> None:
    script = "from django.conf import settings; print(settings.CONTENT_SECURITY_POLICY['DIRECTIVES']['img-src'])"
    env = {
        "SIMSEARCH_DATA_DIR": str(tmp_path),
        "DJANGO_SECRET_KEY": "x" * 60,
        "SIMSEARCH_STORAGE": "s3",
        "AWS_STORAGE_BUCKET_NAME": "parts",
        "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_S3_ENDPOINT_URL": "https://s3.plant.example:9000/some/path",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=ROOT,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SIMSEARCH_", "AWS_"))},
            "DJANGO_SETTINGS_MODULE": "simsearch_project.settings",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.strip().splitlines()[-1] == "[\"'self'\", 'data:', 'https://s3.plant.example:9000']", (
        result.stdout + result.stderr
    )


def test_templates_have_no_inline_scripts_or_event_handlers() -> None:
    """The CSP forbids them; a page that still had one would silently stop working."""
    for template in (ROOT / "templates").rglob("*.html"):
        text = template.read_text()
        for tag in re.findall(r"<script\b[^>]*>", text):
            assert "src=" in tag or 'type="application/json"' in tag, f"inline script in {template}"
        assert not re.search(r"\son[a-z]+\s*=", text), f"inline event handler in {template}"


def test_index_builds_page_loads_its_progress_script_from_a_file(client: Client, staff_user) -> None:
    client.force_login(staff_user)
    page = client.get(reverse("admin:indexing_indexbuild_changelist"))
    assets = page_assets(page.content.decode())
    assert assets.inline_scripts == 0
    script = next(u for u in assets.urls if u.endswith("build_progress.js"))
    assert client.get(script).status_code == 200
    assert f'data-progress-url="{reverse("admin:indexing_indexbuild_progress")}"' in page.content.decode()


# --- Admin login throttling --------------------------------------------------------------------


def admin_login(client: Client, username: str, password: str, address: str = "10.0.0.7"):  # type: ignore[no-untyped-def]
    return client.post(
        reverse("admin:login"),
        {"username": username, "password": password, "next": "/admin/"},
        REMOTE_ADDR=address,
    )


def test_admin_login_is_locked_after_repeated_bad_passwords(settings, staff_user) -> None:
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert admin_login(client, "inspector-lead", "wrong").status_code == 200  # the form again, with an error
    last_try = admin_login(client, "inspector-lead", "wrong")
    assert last_try.status_code == 429

    refused = admin_login(client, "inspector-lead", "pw-staff-123")
    assert refused.status_code == 429
    assert refused["Retry-After"] == str(15 * 60)
    text = refused.content.decode()
    assert "Sign-in locked" in text and "inspector-lead" in text and "Try again in 15 minutes" in text
    assert "axes_reset_username" in text
    assert client.get("/admin/").status_code == 302  # still signed out

    # The lock is per username and address: the same person at another desk still gets in.
    other_desk = Client()
    assert admin_login(other_desk, "inspector-lead", "pw-staff-123", address="10.0.0.8").status_code == 302
    assert other_desk.get("/admin/").status_code == 200


def test_a_successful_login_resets_the_failure_count(settings, staff_user) -> None:
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        admin_login(client, "inspector-lead", "wrong")
    assert admin_login(client, "inspector-lead", "pw-staff-123").status_code == 302
    client.logout()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        admin_login(client, "inspector-lead", "wrong")
    assert admin_login(client, "inspector-lead", "pw-staff-123").status_code == 302


# --- Request body caps ---------------------------------------------------------------------


def test_large_bodies_outside_the_api_are_refused_unless_staff_use_the_admin(
    settings, client: Client, staff_user, plain_user, product, scratch
) -> None:
    settings.SIMSEARCH_MAX_FORM_REQUEST_BYTES = 50_000
    files = [image_bytes("PNG", size=(120, 120), seed=seed) for seed in range(2)]  # ~86 KB in all
    bulk = reverse("admin:catalog_image_bulk_upload")
    form = {"image_type": "defect", "product": product.pk, "defect_type": scratch.pk}

    def post(path: str):  # type: ignore[no-untyped-def]
        from django.core.files.uploadedfile import SimpleUploadedFile

        uploads = [SimpleUploadedFile(f"p{i}.png", data) for i, data in enumerate(files)]
        return client.post(path, {**form, "files": uploads})

    anonymous = post(reverse("admin:login"))
    assert anonymous.status_code == 413 and anonymous["Content-Type"].startswith("text/plain")
    assert "limit is 50000 bytes" in anonymous.content.decode()
    assert post(bulk).status_code == 413  # an anonymous client never reaches the admin's cap

    client.force_login(plain_user)  # signed in, not staff
    assert post(bulk).status_code == 413

    client.force_login(staff_user)
    assert post("/healthz").status_code == 413  # staff's cap is for the admin only
    assert post(bulk).status_code == 302 and Image.objects.count() == 2


def test_api_keeps_its_own_cap_and_json(settings, plain_api) -> None:
    settings.SIMSEARCH_MAX_FORM_REQUEST_BYTES = 10
    settings.SIMSEARCH_MAX_REQUEST_BYTES = 20_000
    small = plain_api.post("/api/search/similarity/", {"top_k": "x" * 1000})
    assert small.status_code != 413  # over the form cap, within the API's
    large = plain_api.post("/api/search/similarity/", {"top_k": "x" * 30_000})
    assert large.status_code == 413 and large.json()["code"] == "too_large"


def read_http_response(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.django_db(transaction=True)
def test_a_real_server_refuses_a_large_anonymous_post_before_reading_it(tmp_path: Path, staff_user, product, scratch):
    declared = 150 * 1024 * 1024
    with running_gunicorn(tmp_path / "gunicorn.log", workers=1) as base:
        host, port = urlsplit(base).hostname, urlsplit(base).port
        # With a CSRF cookie (anyone gets one from the login page) Django's CSRF check reads the
        # form, so only the cap stands between the client and a 150 MB read.
        csrf_cookie = requests.get(f"{base}/admin/login/", timeout=30).cookies["csrftoken"]
        with socket.create_connection((host, port), timeout=10) as sock:
            started = time.monotonic()
            sock.sendall(
                b"POST /admin/login/ HTTP/1.1\r\n"
                + f"Host: {host}:{port}\r\n".encode()
                + f"Cookie: csrftoken={csrf_cookie}\r\n".encode()
                + b"Content-Type: multipart/form-data; boundary=xyz\r\n"
                + f"Content-Length: {declared}\r\n\r\n".encode()
                + b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n\r\n'
                + b"a" * 1024
            )
            # A server that read the body would wait here for 150 MB that never come (socket timeout).
            answer = read_http_response(sock)
            elapsed = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert f"The request body is {declared} bytes; the limit is 1048576 bytes".encode() in answer
        assert elapsed < 5

        # Signed-in staff still upload through the admin: a bulk upload well over the form cap.
        session = requests.Session()
        login_url = f"{base}/admin/login/"
        session.get(login_url, timeout=30)
        signed_in = session.post(
            login_url,
            data={
                "username": "inspector-lead",
                "password": "pw-staff-123",
                "next": "/admin/",
                "csrfmiddlewaretoken": session.cookies["csrftoken"],
            },
            timeout=30,
        )
        assert signed_in.url.endswith("/admin/"), signed_in.text[:500]
        bulk_url = f"{base}/admin/catalog/image/bulk-upload/"
        session.get(bulk_url, timeout=30)
        files = [("files", (f"p{seed}.png", image_bytes("PNG", size=(400, 400), seed=seed))) for seed in range(3)]
        assert sum(len(f[1][1]) for f in files) > 1024 * 1024
        uploaded = session.post(
            bulk_url,
            data={
                "image_type": "defect",
                "product": product.pk,
                "defect_type": scratch.pk,
                "csrfmiddlewaretoken": session.cookies["csrftoken"],
            },
            files=files,
            timeout=60,
        )
        assert uploaded.status_code == 200 and "Uploaded 3 images" in uploaded.text, uploaded.text[:1000]
    assert Image.objects.count() == 3
