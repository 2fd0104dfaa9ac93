"""Korean and English: the admin follows its language switch (a cookie) or the browser's
Accept-Language, the API's error messages follow Accept-Language, DJANGO_LANGUAGE_CODE sets the
default, and every string marked in the code has a Korean translation in the repository."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.test import override_settings
from django.urls import reverse
from rest_framework.test import APIClient

from catalog.management.commands.serve_demo import demo_banner
from tests.conftest import ROOT

pytestmark = pytest.mark.django_db

KOREAN = re.compile(r"[\uac00-\ud7a3]")


@pytest.fixture
def staff_client(client, staff_user):  # type: ignore[no-untyped-def]
    client.force_login(staff_user)
    return client


def test_make_compiles_the_translations_before_testing_and_before_the_demo() -> None:
    """The .mo files are not in git (a clean clone has none): `make test` and `make demo` compile
    them first, and the compiled ones are here for the rest of this run."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    for target, first_use in (("test", "-m pytest"), ("demo", "manage.py migrate")):
        plan = subprocess.run(
            ["make", "-n", target], cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=60
        ).stdout
        assert "manage.py compilemessages" in plan, plan
        assert plan.index("manage.py compilemessages") < plan.index(first_use), plan
    assert "*.mo" in (ROOT / ".gitignore").read_text().splitlines()
    for domain in ("django", "djangojs"):
        assert (ROOT / "locale" / "ko" / "LC_MESSAGES" / f"{domain}.mo").exists(), "run `make messages`"


# --- The admin -------------------------------------------------------------------------------


def test_admin_is_english_by_default_and_korean_for_a_korean_browser(staff_client):
    url = reverse("admin:index")
    english = staff_client.get(url).content.decode()
    assert "Search console</a>" in english and "Index builds" in english and "Defect types" in english
    assert '<html lang="en"' in english and not KOREAN.search(english.replace("한국어", ""))

    korean = staff_client.get(url, HTTP_ACCEPT_LANGUAGE="ko-KR,ko;q=0.9,en;q=0.5").content.decode()
    # Ours (the console link, app and model names, the site header), and Django's own words.
    assert "검색 콘솔</a>" in korean and "인덱스 빌드" in korean and "불량 유형" in korean
    assert "simsearch 관리" in korean and "로그아웃" in korean and '<html lang="ko"' in korean


def test_index_builds_page_and_its_script_words_follow_the_language_cookie(staff_client, settings):
    staff_client.cookies[settings.LANGUAGE_COOKIE_NAME] = "ko"
    page = staff_client.get(reverse("admin:indexing_indexbuild_changelist")).content.decode()
    assert "인덱스 빌드 선택 | simsearch</title>" in page and "전체 인덱스" in page and "학습되지 않은 가중치" in page
    # The page's script takes its words from the JavaScript catalog, a script file of this origin
    # loaded before it (no inline script under the CSP).
    catalog_src = reverse("javascript-catalog")
    assert page.index(f'<script src="{catalog_src}">') < page.index("indexing/build_progress.js")
    script = staff_client.get(catalog_src).content.decode()
    catalog = json.loads(re.search(r"const newcatalog = (\{.*?\});\n", script, re.S).group(1))
    assert catalog["Build %(id)s (%(image_type)s) is ready and now answers searches."] == (
        "빌드 %(id)s (%(image_type)s) 완료: 이제 이 빌드가 검색에 응답합니다."
    )


def test_the_language_switch_changes_the_admin_language(staff_client):
    page = staff_client.get(reverse("admin:index")).content.decode()
    form = re.search(r'<form action="/i18n/setlang/" method="post" id="language-switch".*?</form>', page, re.S)
    assert form is not None, "the switch is in the admin's user links"
    # A select and a submit button: usable with the keyboard, and no inline script for the CSP.
    assert '<select name="language"' in form.group(0) and 'type="submit"' in form.group(0)
    assert '<option value="ko" lang="ko">한국어</option>' in form.group(0)
    assert not re.search(r"\son\w+=", form.group(0))

    switched = staff_client.post("/i18n/setlang/", {"language": "ko", "next": reverse("admin:index")})
    assert switched.status_code == 302 and switched["Location"] == reverse("admin:index")
    after = staff_client.get(switched["Location"]).content.decode()
    assert "검색 콘솔</a>" in after and '<option value="ko" lang="ko" selected>' in after

    staff_client.post("/i18n/setlang/", {"language": "en", "next": reverse("admin:index")})
    assert "Search console</a>" in staff_client.get(reverse("admin:index")).content.decode()


def test_the_login_page_has_the_switch_too(client):
    page = client.get(reverse("admin:login"), HTTP_ACCEPT_LANGUAGE="ko").content.decode()
    assert 'id="language-switch"' in page and "로그인" in page


@override_settings(LANGUAGE_CODE="ko")
def test_django_language_code_sets_the_default_and_a_browser_may_still_ask_for_english(staff_client):
    """DJANGO_LANGUAGE_CODE=ko (settings.LANGUAGE_CODE) makes Korean what a request without a
    preference gets; Accept-Language or the switch still choose English."""
    url = reverse("admin:index")
    assert "검색 콘솔</a>" in staff_client.get(url).content.decode()
    assert "Search console</a>" in staff_client.get(url, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    body = APIClient().get("/api/products/").json()
    assert body["detail"] == "자격 인증 데이터가 제공되지 않았습니다."


@override_settings(LANGUAGE_CODE="ko")
def test_the_demo_banner_follows_django_language_code(staff_user, settings):
    settings.SIMSEARCH_PRETRAINED = "untrained"
    banner = demo_banner("http://127.0.0.1:8000")
    assert "  시작 페이지: http://127.0.0.1:8000/\n" in banner
    assert "학습되지 않은 가중치" in banner and "경고" in banner


# --- The API ---------------------------------------------------------------------------------


def api_error(client: APIClient, method: str, path: str, language: str | None = None, **kwargs) -> dict:  # type: ignore[no-untyped-def]
    headers = {"HTTP_ACCEPT_LANGUAGE": language} if language else {}
    response = getattr(client, method)(path, **kwargs, **headers)
    assert 400 <= response.status_code < 500, response.content
    return response.json()


def test_api_errors_follow_accept_language(staff_api):
    # Ours: the search request's validation (400) and an unknown build (404).
    search = ("post", "/api/search/similarity/")
    assert api_error(staff_api, *search, data={}, format="json")["detail"] == (
        "Send exactly one of image, image_id, storage_url or text."
    )
    assert api_error(staff_api, *search, "ko", data={}, format="json")["detail"] == (
        "image, image_id, storage_url, text 중 정확히 하나만 보내세요."
    )
    activate = ("post", "/api/index/builds/999/activate/")
    assert api_error(staff_api, *activate)["detail"] == "No index build 999."
    assert api_error(staff_api, *activate, "ko-KR,ko;q=0.9")["detail"] == "인덱스 빌드 999이(가) 없습니다."
    # A service's ValidationError: an unknown product on upload.
    upload = {"image_type": "normal", "product_code": "nope"}
    assert "Unknown product code “nope”." in str(api_error(staff_api, "post", "/api/images/", data=upload))
    assert "알 수 없는 제품 코드 “nope”입니다." in str(api_error(staff_api, "post", "/api/images/", "ko", data=upload))
    # DRF's own words (it ships Korean) and a 404 outside any view.
    assert api_error(APIClient(), "get", "/api/products/")["detail"] == "Authentication credentials were not provided."
    assert api_error(APIClient(), "get", "/api/products/", "ko")["detail"] == "자격 인증 데이터가 제공되지 않았습니다."
    assert api_error(staff_api, "get", "/api/no-such-endpoint/", "ko")["detail"] == "찾을 수 없습니다."


def test_messages_made_at_import_time_are_translated_per_request(staff_api):
    """Class attributes (a field's error messages) are lazy: one process answers each request in its
    own language, in any order."""
    bad = {"product_code": 5, "product_name": "x"}
    answers = [("ko", "문자열이어야 합니다."), ("en", "Must be a string."), ("ko", "문자열이어야 합니다.")]
    for language, expected in answers:
        body = api_error(staff_api, "post", "/api/products/", language, data=bad, format="json")
        assert body["errors"]["product_code"] == [expected]


# --- Every marked string has a Korean translation -----------------------------------------------


def _msgids(po_text: str) -> list[str]:
    """The msgids of a .po text's entries, the header left out."""
    found = []
    for block in po_text.split("\n\n"):
        strings = re.findall(r'^(?:msgid )?"(.*)"$', block.split("msgstr", 1)[0], re.M)
        if strings and "".join(strings):
            found.append("".join(strings))
    return found


def test_every_marked_string_has_a_korean_translation(tmp_path: Path) -> None:
    """`make makemessages` run on a copy of the project: a string marked in the code but missing from
    the committed .po files, or there without a translation (or only a fuzzy guess), fails here."""
    msgattrib = shutil.which("msgattrib")
    assert msgattrib, "GNU gettext is missing: `make test` installs it (Debian's gettext package)"
    makefile = (ROOT / "Makefile").read_text()
    arguments = re.search(r"^MAKEMESSAGES_ARGS := (.*)$", makefile, re.M).group(1).split()
    project = tmp_path / "project"
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns(".*", "var", "__pycache__", "*.mo"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SIMSEARCH_", "AWS_"))}
    env |= {
        "DJANGO_SETTINGS_MODULE": "simsearch_project.settings",
        "DJANGO_DEBUG": "true",
        "SIMSEARCH_STORAGE": "local",
        "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
    }
    for domain in ("django", "djangojs"):
        subprocess.run(
            [sys.executable, "manage.py", "makemessages", "-d", domain, *arguments],
            cwd=project,
            env=env,
            check=True,
            capture_output=True,
            timeout=300,
        )
    problems = {}
    for po in sorted((project / "locale").glob("*/LC_MESSAGES/*.po")):
        for flag in ("--untranslated", "--only-fuzzy"):
            result = subprocess.run(
                [msgattrib, flag, "--no-obsolete", str(po)], capture_output=True, text=True, check=True
            )
            if _msgids(result.stdout):
                problems[f"{po.relative_to(project)} {flag}"] = _msgids(result.stdout)
    assert problems == {}, "run `make makemessages` and translate these in locale/ko/LC_MESSAGES/"
    assert {po.name for po in (project / "locale" / "ko" / "LC_MESSAGES").glob("*.po")} == {"django.po", "djangojs.po"}
    assert len(_msgids((ROOT / "locale/ko/LC_MESSAGES/django.po").read_text())) > 200  # the parser still works
    assert settings.LOCALE_PATHS == [ROOT / "locale"]
