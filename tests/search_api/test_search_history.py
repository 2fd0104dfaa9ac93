"""Every search is recorded (who, when, what was asked, which build answered, what came back, how
long it took), an uploaded photo by its content hash only; old rows are purged; staff read the
history in the admin and export it as CSV."""

from __future__ import annotations

import csv
import hashlib
import io
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.utils import timezone
from django_q.models import Schedule

from search_api.apps import SEARCH_LOG_SCHEDULE
from search_api.models import SearchLog
from search_api.services import search_log_purge
from tests.helpers import image_bytes

pytestmark = pytest.mark.django_db

SEARCH = "/api/search/similarity/"


def test_each_kind_of_search_is_recorded_with_what_it_answered(plain_api, plain_user, indexed_gallery):
    photo = image_bytes(seed=4, size=(72, 72))
    by_upload = plain_api.post(
        SEARCH, {"image": SimpleUploadedFile("q.jpg", photo), "top_k": 3, "product_code": "gear-b"}, format="multipart"
    ).json()
    some_id = next(iter(indexed_gallery.images))
    plain_api.post(SEARCH, {"image_id": some_id, "image_type": "normal"}, format="json")
    plain_api.post(SEARCH, {"text": "a scratch"}, format="json")
    rows = list(SearchLog.objects.order_by("id"))
    assert [r.query_kind for r in rows] == ["upload", "image_id", "text"]
    upload = rows[0]
    assert upload.query_ref == hashlib.sha256(photo).hexdigest()  # the hash, never the bytes
    assert upload.user == plain_user and upload.source == "api" and upload.engine == "v2"
    assert upload.filters == {"top_k": 3, "product_code": "gear-b"} and upload.image_type == "defect"
    assert upload.build_id == by_upload["index"]["build_id"] == indexed_gallery.defect_build.pk
    assert upload.result_ids == [r["image_id"] for r in by_upload["results"]]
    assert upload.scores == [r["similarity_score"] for r in by_upload["results"]]
    assert upload.latency_ms > 0
    assert rows[1].query_ref == str(some_id) and rows[1].build_id == indexed_gallery.normal_build.pk
    assert rows[2].query_ref == "a scratch"


def test_a_refused_search_is_not_recorded(plain_api, indexed_gallery):
    assert plain_api.post(SEARCH, {"text": "x", "product_code": "nope"}, format="json").status_code == 400
    assert not SearchLog.objects.exists()


def test_old_history_is_purged_by_the_retention_setting(settings, plain_api, indexed_gallery):
    settings.SIMSEARCH_SEARCH_LOG_DAYS = 30
    plain_api.post(SEARCH, {"text": "old"}, format="json")
    plain_api.post(SEARCH, {"text": "new"}, format="json")
    SearchLog.objects.filter(query_ref="old").update(created_at=timezone.now() - timedelta(days=31))
    assert search_log_purge() == 1
    assert list(SearchLog.objects.values_list("query_ref", flat=True)) == ["new"]


def test_the_purge_is_scheduled_once(db):
    call_command("migrate", verbosity=0)  # post_migrate again: still one
    schedule = Schedule.objects.get(name=SEARCH_LOG_SCHEDULE)
    assert schedule.func == "search_api.tasks.purge_search_log" and schedule.schedule_type == Schedule.DAILY


def test_staff_filter_and_export_the_history(client, staff_user, plain_api, indexed_gallery):
    plain_api.post(SEARCH, {"text": "scratch"}, format="json")
    plain_api.post(SEARCH, {"image_id": next(iter(indexed_gallery.images))}, format="json")
    client.force_login(staff_user)
    page = client.get("/admin/search_api/searchlog/?query_kind__exact=text")
    assert page.status_code == 200 and "scratch" in page.content.decode()
    ids = list(SearchLog.objects.values_list("pk", flat=True))
    export = client.post(
        "/admin/search_api/searchlog/", {"action": "export_csv", "_selected_action": [str(i) for i in ids]}
    )
    assert export["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(export.content.decode())))
    assert [r["query_kind"] for r in rows] == ["text", "image_id"] and rows[0]["user"] == "line-pc"


def test_the_browsable_search_page_offers_a_file_field(client, staff_user, indexed_gallery):
    client.force_login(staff_user)
    page = client.get("/api/search/similarity/", HTTP_ACCEPT="text/html").content.decode()
    assert 'type="file"' in page and 'name="image"' in page and 'enctype="multipart/form-data"' in page
