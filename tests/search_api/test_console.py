"""The staff search console at /admin/search/: the same service as the API, in the admin."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from search_api.models import SearchLog

pytestmark = pytest.mark.django_db

CONSOLE = "/admin/search/"


def cards(page: str) -> list[tuple[int, float]]:
    import re

    return [(int(i), float(s)) for i, s in re.findall(r'data-image-id="(\d+)" data-score="([0-9.]+)"', page)]


def test_a_photo_search_shows_result_cards_and_is_recorded(client, staff_user, indexed_gallery):
    client.force_login(staff_user)
    (image_id, photo) = next(iter(indexed_gallery.images.items()))
    page = client.post(CONSOLE, {"photo": SimpleUploadedFile("q.png", photo), "image_type": "defect", "top_k": 4})
    html = page.content.decode()
    assert page.status_code == 200, html[:2000]
    found = cards(html)
    scores = [score for _, score in found]
    assert len(found) == 4 and found[0] == (image_id, 1.0) and scores == sorted(scores, reverse=True)
    assert f"build <strong>{indexed_gallery.defect_build.pk}</strong>" in html and "untrained" in html
    log = SearchLog.objects.get()
    assert log.source == "console" and log.result_ids == [i for i, _ in found] and log.user == staff_user


def test_find_similar_link_searches_by_catalog_image_leaving_itself_out(client, staff_user, indexed_gallery):
    client.force_login(staff_user)
    image_id = next(iter(indexed_gallery.images))
    page = client.get(CONSOLE, {"image_id": image_id, "exclude_self": "on", "image_type": "defect", "top_k": 5})
    found = cards(page.content.decode())
    assert len(found) == 5 and image_id not in [i for i, _ in found]
    assert SearchLog.objects.get().query_kind == "image_id"


def test_the_console_needs_view_image_and_says_what_is_wrong(client, staff_user, django_user_model, db):
    no_rights = django_user_model.objects.create_user("staff-without-rights", password="x", is_staff=True)
    client.force_login(no_rights)
    assert client.get(CONSOLE).status_code == 403
    assert "Search console" not in client.get("/admin/").content.decode()
    client.force_login(staff_user)
    assert "Search console" in client.get("/admin/").content.decode()
    empty = client.post(CONSOLE, {"image_type": "defect", "top_k": 5})
    assert "Give exactly one query" in empty.content.decode()
    no_index = client.post(CONSOLE, {"text": "dent", "image_type": "defect", "top_k": 5})
    assert "Run a rebuild" in no_index.content.decode()


def test_find_similar_from_the_image_page_and_the_changelist(client, staff_user, indexed_gallery):
    client.force_login(staff_user)
    image_id = next(iter(indexed_gallery.images))
    page = client.get(f"/admin/catalog/image/{image_id}/change/").content.decode()
    link = f"/admin/search/?image_id={image_id}&amp;exclude_self=on&amp;image_type=defect&amp;top_k=10"
    assert f'href="{link}"' in page
    found = cards(client.get(link.replace("&amp;", "&")).content.decode())
    assert len(found) == 10 and image_id not in [i for i, _ in found]
    action = client.post("/admin/catalog/image/", {"action": "find_similar", "_selected_action": [str(image_id)]})
    assert action.status_code == 302 and action["Location"] == link.replace("&amp;", "&")
    two = client.post(
        "/admin/catalog/image/",
        {"action": "find_similar", "_selected_action": [str(i) for i in list(indexed_gallery.images)[:2]]},
        follow=True,
    )
    assert "Select exactly one image" in two.content.decode()
