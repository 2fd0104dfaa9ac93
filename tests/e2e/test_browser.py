"""The staff flow in a real browser (Debian's Chromium driven by Playwright, headless):
log in, add a product and a defect type, bulk-upload photos, press Rebuild, watch the progress
bar reach the end, see the build active, then find an uploaded photo through the search API."""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from django.db import connection
from django.utils import timezone
from playwright.sync_api import expect, sync_playwright
from rest_framework.authtoken.models import Token

from indexing.models import IndexBuild
from tests.conftest import ROOT, running_gunicorn, running_qcluster
from tests.helpers import image_bytes

pytestmark = pytest.mark.django_db(transaction=True)

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(os.environ.get("SIMSEARCH_SCREENSHOT_DIR", ROOT / "var" / "test" / "screenshots"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def pick_autocomplete(page, field: str, text: str) -> None:  # type: ignore[no-untyped-def]
    page.click(f".field-{field} .select2-selection")
    page.fill(".select2-container--open .select2-search__field", text)
    page.click(f".select2-results__option:has-text('{text}')")


def update_build(pk: int, **fields: object) -> None:
    """Move a build row as a worker would, while Playwright's event loop runs in this thread
    (Django refuses ORM calls there): from a thread of its own, on its own connection."""

    def update() -> None:
        try:
            IndexBuild.objects.filter(pk=pk).update(**fields)
        finally:
            connection.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(update).result()


def csp_violations(page) -> list[str]:  # type: ignore[no-untyped-def]
    """A list that fills with the Content-Security-Policy violations Chromium reports on `page`."""
    found: list[str] = []
    page.on("console", lambda message: "Content Security Policy" in message.text and found.append(message.text))
    return found


def test_staff_flow_in_a_browser(tmp_path: Path, django_user_model):
    assert Path(CHROMIUM).exists(), "Debian's chromium is installed by `make test` (see Makefile)"
    django_user_model.objects.create_user("lead", password="pw-lead-123", is_staff=True, is_superuser=True)
    photos = []
    for seed in range(6):
        path = tmp_path / f"scratch-{seed}.jpg"
        path.write_bytes(image_bytes(seed=seed, size=(96, 96)))
        photos.append(path)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with running_gunicorn(tmp_path / "gunicorn.log", workers=1) as base, running_qcluster(tmp_path / "qcluster.log"):
        playwright = sync_playwright().start()
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        # Every admin page runs under the Content-Security-Policy; Chromium logs what it blocks.
        blocked = csp_violations(page)
        page.goto(f"{base}/admin/login/")
        page.fill("#id_username", "lead")
        page.fill("#id_password", "pw-lead-123")
        page.click("input[type=submit]")
        expect(page.locator("#site-name")).to_contain_text("simsearch")

        page.goto(f"{base}/admin/catalog/product/add/")
        page.fill("#id_product_code", "bracket-a")
        page.fill("#id_product_name", "브래킷 A")
        page.click("input[name=_save]")
        expect(page.locator(".messagelist")).to_contain_text("was added successfully")

        page.goto(f"{base}/admin/catalog/defecttype/add/")
        page.fill("#id_defect_code", "scratch")
        page.fill("#id_defect_name_ko", "긁힘")
        page.fill("#id_defect_name_en", "Scratch")
        page.click("input[name=_save]")
        expect(page.locator(".messagelist")).to_contain_text("was added successfully")

        page.goto(f"{base}/admin/catalog/image/")
        page.click("text=Bulk upload images")
        page.select_option("#id_image_type", "defect")
        pick_autocomplete(page, "product", "bracket-a")
        pick_autocomplete(page, "defect_type", "scratch")
        page.set_input_files("input[name=files]", [str(p) for p in photos])
        page.click("input[name=_upload]")
        expect(page.locator(".messagelist")).to_contain_text("Uploaded 6 images")

        page.goto(f"{base}/admin/indexing/indexbuild/")
        page.screenshot(path=str(SCREENSHOTS / "build-page-start.png"), full_page=True)
        page.click("button[name=index_type][value=defect]")
        expect(page.locator(".messagelist")).to_contain_text("Rebuild queued")
        # The page's script follows the build and reloads when it finishes.
        expect(page.locator(".build-status").first).to_have_text("Ready", timeout=120_000)
        bar = page.locator("progress.build-progress").first
        assert bar.get_attribute("value") == bar.get_attribute("max") == "6"
        expect(page.locator("td.field-is_active img").first).to_have_attribute("alt", "True")
        page.screenshot(path=str(SCREENSHOTS / "build-page-end.png"), full_page=True)
        assert blocked == []
        browser.close()
        playwright.stop()  # its event loop must be gone before the ORM is used again

        build = IndexBuild.objects.get()
        assert build.status == "ready" and build.is_active and build.vector_count == 6
        token = Token.objects.create(user=django_user_model.objects.get(username="lead")).key
        response = requests.post(
            f"{base}/api/search/similarity/",
            files={"image": ("q.jpg", photos[4].read_bytes())},
            headers={"Authorization": f"Token {token}"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        first = response.json()["results"][0]
        assert first["similarity_score"] == pytest.approx(1.0, abs=1e-4)
        assert requests.get(first["storage_url"], timeout=10).content == photos[4].read_bytes()
    assert (SCREENSHOTS / "build-page-start.png").stat().st_size > 0
    assert (SCREENSHOTS / "build-page-end.png").stat().st_size > 0


def test_build_page_status_follows_the_progress_and_says_when_ready(tmp_path: Path, django_user_model):
    """The status column changes with the progress bar (no reload needed), and a build that becomes
    ready is announced in the page's live region, which survives the reload that follows. The row
    is moved by hand, as a worker would, so each step is seen for certain."""
    assert Path(CHROMIUM).exists(), "Debian's chromium is installed by `make test` (see Makefile)"
    django_user_model.objects.create_user("lead", password="pw-lead-123", is_staff=True, is_superuser=True)
    build = IndexBuild.objects.create(image_type="defect", model_name="ViT-B-32", pretrained="untrained")
    with running_gunicorn(tmp_path / "gunicorn.log", workers=1) as base:
        playwright = sync_playwright().start()
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        blocked = csp_violations(page)
        page.goto(f"{base}/admin/login/?next=/admin/indexing/indexbuild/")
        page.fill("#id_username", "lead")
        page.fill("#id_password", "pw-lead-123")
        page.click("input[type=submit]")
        status = page.locator(f'.build-status[data-build="{build.pk}"]')
        expect(status).to_have_text("Queued")
        # Status, progress, counts and model are all on screen at 1366 px, without scrolling sideways.
        for cell in ("td.field-status_label", "td.field-progress", "td.field-counts", "td.field-model_label"):
            box = page.locator(cell).first.bounding_box()
            assert box is not None and box["width"] > 0 and box["x"] + box["width"] <= 1366, (cell, box)
        assert page.evaluate("document.documentElement.scrollWidth") <= 1366
        # A marker a reload would wipe: the running step must be shown without one.
        page.evaluate("window.notReloaded = true")
        update_build(build.pk, status="running", progress_done=3, progress_total=6, heartbeat_at=timezone.now())
        expect(status).to_have_text("Running", timeout=15_000)
        expect(status).to_have_class(re.compile(r"build-status-running"))
        assert page.locator(f'progress[data-build="{build.pk}"]').get_attribute("value") == "3"
        assert page.evaluate("window.notReloaded") is True
        expect(page.locator("#build-announcement")).to_be_empty()
        update_build(
            build.pk, status="ready", progress_done=6, is_active=True, vector_count=6, finished_at=timezone.now()
        )
        expect(page.locator("#build-announcement")).to_have_text(
            f"Build {build.pk} (defect) is ready and now answers searches.", timeout=15_000
        )
        # After the reload (fresh counts and active flag) the message is still there, once.
        expect(page.locator("td.field-counts").first).to_contain_text("6 · 0 · 0 · 0", timeout=15_000)
        expect(page.locator("#build-announcement")).to_have_text(
            f"Build {build.pk} (defect) is ready and now answers searches."
        )
        page.reload()
        expect(page.locator("#build-announcement")).to_be_empty()
        assert blocked == []
        browser.close()
        playwright.stop()


def test_api_docs_render_offline_under_the_content_security_policy(tmp_path: Path):
    """Swagger UI and ReDoc come from the server itself (Chromium here reaches nothing else) and
    run with script-src 'self'."""
    assert Path(CHROMIUM).exists(), "Debian's chromium is installed by `make test` (see Makefile)"
    with running_gunicorn(tmp_path / "gunicorn.log", workers=1) as base:
        playwright = sync_playwright().start()
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        blocked = csp_violations(page)
        off_site: list[str] = []  # requests to other hosts that got through (blocked ones fail)
        page.on(
            "requestfinished",
            lambda request: request.url.startswith((base, "blob:", "data:")) or off_site.append(request.url),
        )
        page.goto(f"{base}/api/docs/")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("simsearch API", timeout=30_000)
        expect(page.locator(".opblock-summary-path").first).to_be_visible()
        page.goto(f"{base}/api/redoc/")
        expect(page.locator("h1")).to_contain_text("simsearch API", timeout=30_000)
        expect(page.locator("h2", has_text="search").first).to_be_visible()
        browser.close()
        playwright.stop()
    # ReDoc's sidebar always tries the Redocly logo from its CDN (and hides it when it fails): the
    # policy blocking that is the policy working. Anything else blocked would be our own code.
    assert [m for m in blocked if "https://cdn.redoc.ly/redoc/logo-mini.svg" not in m] == []
    assert off_site == []
