"""The admin's language switch in a real browser (Debian's Chromium, headless): reached and used with
the keyboard only, under the Content-Security-Policy, and the index builds page's script then speaks
Korean too (its words come from the JavaScript catalog)."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.conftest import running_gunicorn

pytestmark = pytest.mark.django_db(transaction=True)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def test_language_switch_with_the_keyboard(tmp_path: Path, django_user_model):
    assert Path(CHROMIUM).exists(), "Debian's chromium is installed by `make test` (see Makefile)"
    django_user_model.objects.create_user("lead", password="pw-lead-123", is_staff=True, is_superuser=True)
    with running_gunicorn(tmp_path / "gunicorn.log", workers=1) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1366, "height": 900}, locale="en-US")
        blocked: list[str] = []
        page.on("console", lambda message: "Content Security Policy" in message.text and blocked.append(message.text))
        page.goto(f"{base}/admin/login/?next=/admin/indexing/indexbuild/")
        page.fill("#id_username", "lead")
        page.fill("#id_password", "pw-lead-123")
        page.keyboard.press("Enter")
        expect(page.locator(".search-console-link")).to_have_text("Search console")

        # Keyboard only: focus the language select, pick the next language, Tab to the button, Enter.
        page.focus("#language-switch-select")
        page.keyboard.press("ArrowDown")
        assert page.eval_on_selector("#language-switch-select", "select => select.value") == "ko"
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "language-switch-submit"
        page.keyboard.press("Enter")

        expect(page.locator(".search-console-link")).to_have_text("검색 콘솔")
        expect(page.locator("#rebuild-all")).to_have_text("전체 인덱스")
        assert page.evaluate("document.documentElement.lang") == "ko"
        translated = page.evaluate("gettext('Build %(id)s (%(image_type)s) is ready.')")
        assert translated == "빌드 %(id)s (%(image_type)s) 완료."
        assert blocked == []
        browser.close()
