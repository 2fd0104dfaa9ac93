"""The staff search console in a real browser (Debian's Chromium, Playwright, headless) at 1366 px:
reach it with the keyboard, search with a pasted and a dropped photo, by text, from an image's
"Find similar" button, compare engines, check a part for anomalies, and find it all in the history
(issues 9 and 10)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from catalog.models import DefectType, ImageType, Product
from catalog.services import image_create
from tests.conftest import running_gunicorn
from tests.e2e.test_browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, csp_violations, pick_autocomplete
from tests.helpers import image_bytes, surface_photo
from tests.indexing.conftest import build_now

pytestmark = pytest.mark.django_db(transaction=True)

WIDTH = 1366

# Hand a file to the page the way the clipboard or a drag from the desktop would.
GIVE_FILE = """([kind, b64, name]) => {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], name, {type: "image/png"}));
  if (kind === "paste") {
    document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: data, bubbles: true, cancelable: true}));
  } else {
    document.getElementById("search-console-form").dispatchEvent(
      new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
  }
}"""


def first_card(page):  # type: ignore[no-untyped-def]
    card = page.locator('section[data-engine="v2"] .result-card').first
    return int(card.get_attribute("data-image-id")), float(card.get_attribute("data-score"))


def fits(page) -> bool:  # type: ignore[no-untyped-def]
    return page.evaluate("document.documentElement.scrollWidth") <= WIDTH


@pytest.mark.timeout(600)
def test_console_in_a_browser(settings, tmp_path: Path, django_user_model):
    assert Path(CHROMIUM).exists(), "Debian's chromium is installed by `make test` (see Makefile)"
    django_user_model.objects.create_user("lead", password="pw-lead-123", is_staff=True, is_superuser=True)
    product = Product.objects.create(product_code="bracket-a", product_name="브래킷 A")
    scratch = DefectType.objects.create(defect_code="scratch", defect_name_ko="긁힘", defect_name_en="Scratch")
    photos = [image_bytes(fmt="PNG", seed=seed, size=(96, 96)) for seed in range(8)]
    images = [
        image_create(data=data, image_type=ImageType.DEFECT, product=product, defect_type=scratch) for data in photos
    ]
    for seed in range(5):  # enough normal parts for an anomaly model of bracket-a
        image_create(data=surface_photo(seed), image_type=ImageType.NORMAL, product=product)
    (tmp_path / "dented.png").write_bytes(surface_photo(77, defect=True))
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for n, data in enumerate(photos):  # the same pictures, the last one filed as a dent by its name
        (legacy / (f"bracket-a_scratch_{n}.png" if n < 7 else "bracket-a_dent_7.png")).write_bytes(data)
    settings.INDEX_DIR_V1 = str(legacy)
    assert build_now("defect").status == build_now("defect", engine="v1").status == "ready"
    assert build_now("normal").status == "ready"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    with running_gunicorn(tmp_path / "gunicorn.log", workers=1) as base:
        playwright = sync_playwright().start()
        try:
            browse(playwright, base, images, photos, tmp_path / "dented.png")
        finally:
            playwright.stop()  # its event loop must be gone before the ORM is used again


def browse(playwright, base: str, images, photos: list[bytes], dented: Path) -> None:  # type: ignore[no-untyped-def]
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": WIDTH, "height": 900})
    blocked = csp_violations(page)
    page.goto(f"{base}/admin/login/")
    page.fill("#id_username", "lead")
    page.fill("#id_password", "pw-lead-123")
    page.keyboard.press("Enter")
    expect(page.locator("#site-name")).to_contain_text("simsearch")

    # The admin's navigation leads to the console; the keyboard follows the link.
    page.get_by_role("link", name="Search console").first.focus()
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_contain_text("Search console")

    # A photo pasted from the clipboard becomes the query; Enter in a field submits the form.
    page.evaluate(GIVE_FILE, ["paste", base64.b64encode(photos[3]).decode(), "clipboard.png"])
    expect(page.locator(".photo-drop-hint")).to_have_text("Pasted: clipboard.png")
    page.focus("#id_top_k")
    page.keyboard.press("Enter")
    expect(page.locator(".result-card").first).to_be_visible()
    assert first_card(page) == (images[3].pk, pytest.approx(1.0, abs=1e-4))
    assert page.locator(".result-card").count() == 8
    # Previews are the stored thumbnails, and they load.
    preview = page.locator(".result-card img").first
    assert "/thumbnails/" in preview.get_attribute("src")
    expect(preview).to_have_js_property("complete", True)
    assert preview.evaluate("img => img.naturalWidth") > 0
    assert fits(page)

    # A photo dropped on the form replaces the text query typed before it.
    page.fill("#id_text", "a scratch")
    page.evaluate(GIVE_FILE, ["drop", base64.b64encode(photos[5]).decode(), "dropped.png"])
    expect(page.locator(".photo-drop-hint")).to_have_text("Dropped: dropped.png")
    assert page.input_value("#id_text") == ""
    page.click("input[name=_search]")
    expect(page.locator(".result-card").first).to_be_visible()
    assert first_card(page)[0] == images[5].pk

    # By text.
    page.fill("#id_text", "a scratch on a bracket")
    page.fill("#id_top_k", "3")
    page.click("input[name=_search]")
    expect(page.locator(".search-build")).to_contain_text("query: text:a scratch on a bracket")
    assert page.locator(".result-card").count() == 3

    # "Find similar" on an image's page opens the console with that image, itself left out.
    page.goto(f"{base}/admin/catalog/image/{images[7].pk}/change/")
    page.get_by_role("link", name="Find similar").focus()
    page.keyboard.press("Enter")
    expect(page.locator(".result-card").first).to_be_visible()
    shown = [
        int(i)
        for i in page.locator('section[data-engine="v2"] .result-card').evaluate_all(
            "cards => cards.map(c => c.dataset.imageId)"
        )
    ]
    assert len(shown) == 7 and images[7].pk not in shown

    # Compare engines, ticked with the keyboard, for the picture the legacy name files as a dent.
    page.fill("#id_image_id", str(images[7].pk))
    page.uncheck("#id_exclude_self")
    page.focus("#id_compare")
    page.keyboard.press("Space")
    page.click("input[name=_search]")
    expect(page.locator('section[data-engine="v1"]')).to_be_visible()
    expect(page.locator("[data-overlap]")).to_have_text("8")
    expect(page.locator("tr.disagreement")).to_have_count(1)
    expect(page.locator("tr.disagreement")).to_contain_text("bracket-a_dent_7.png")
    assert page.locator('section[data-engine="v1"] .result-card').count() == 8
    # Both answers stay on screen side by side at 1366 px.
    boxes = [page.locator(f'section[data-engine="{e}"]').bounding_box() for e in ("v2", "v1")]
    assert boxes[0]["x"] + boxes[0]["width"] <= boxes[1]["x"] and boxes[1]["x"] + boxes[1]["width"] <= WIDTH
    assert fits(page)
    page.screenshot(path=str(SCREENSHOTS / "console-compare.png"), full_page=True)

    # Anomaly mode, chosen with the keyboard: a dented part of bracket-a against its normal parts.
    page.goto(f"{base}/admin/search/")
    page.focus("#id_mode_1")
    page.keyboard.press("Space")
    page.set_input_files("#id_photo", str(dented))
    pick_autocomplete(page, "product", "bracket-a")
    page.click("input[name=_search]")
    answer = page.locator("section.anomaly-answer")
    expect(answer).to_have_attribute("data-anomalous", "true")
    expect(page.locator(".anomaly-verdict")).to_contain_text("Anomalous")
    overlay = page.locator(".anomaly-pictures img").first
    expect(overlay).to_have_js_property("complete", True)
    assert overlay.evaluate("img => img.naturalWidth") == 160
    expect(page.locator(".nearest-normal img")).to_be_visible()
    assert fits(page)
    page.screenshot(path=str(SCREENSHOTS / "console-anomaly.png"), full_page=True)

    # The product page shows its anomaly model and takes a threshold override, at 1366 px.
    page.goto(f"{base}/admin/catalog/product/")
    page.get_by_role("link", name="bracket-a").first.click()
    expect(page.locator(".field-anomaly_model")).to_contain_text("from 5 normal images")
    expect(page.locator("#id_anomaly_threshold")).to_be_visible()
    assert fits(page)
    page.screenshot(path=str(SCREENSHOTS / "product-anomaly.png"), full_page=True)

    # Every search and check of this session is in the history.
    page.goto(f"{base}/admin/search_api/searchlog/")
    expect(page.locator("#result_list tbody tr")).to_have_count(7)
    assert blocked == []
    browser.close()
