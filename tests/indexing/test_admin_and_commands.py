from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from django_q.models import OrmQ, Schedule
from rest_framework.authtoken.models import Token

from catalog.apps import PURGE_SCHEDULE
from catalog.management.commands.serve_demo import demo_banner
from catalog.models import DefectType, Image, Product
from indexing.admin import UNTRAINED_WARNING
from indexing.apps import STALE_BUILD_SCHEDULE
from indexing.models import BuildStatus, IndexBuild
from indexing.services import index_build_request
from search_api.index_cache import index_cache
from tests.helpers import image_bytes
from tests.indexing.conftest import build_now

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, staff_user):  # type: ignore[no-untyped-def]
    client.force_login(staff_user)
    return client


def test_rebuild_button_queues_builds_and_the_page_shows_progress(staff_client, gallery, settings):
    page = staff_client.get(reverse("admin:indexing_indexbuild_changelist"))
    assert page.status_code == 200 and b'id="rebuild-all"' in page.content
    assert b"untrained weights" in page.content  # tests run on SIMSEARCH_PRETRAINED=untrained
    response = staff_client.post(reverse("admin:indexing_indexbuild_rebuild"), {"index_type": "all"})
    assert response.status_code == 302
    builds = IndexBuild.objects.order_by("image_type")
    assert [(b.image_type, b.status) for b in builds] == [("defect", "queued"), ("normal", "queued")]
    page = staff_client.get(reverse("admin:indexing_indexbuild_changelist")).content.decode()
    assert page.count('<progress class="build-progress"') == 2 and "Queued" in page
    progress = staff_client.get(reverse("admin:indexing_indexbuild_progress")).json()
    assert {b["id"] for b in progress["builds"]} == {b.pk for b in builds}


def test_progress_reports_what_the_status_column_and_the_ready_message_need(staff_client, gallery):
    """The page's script rewrites the status column and announces a ready build from this JSON."""
    built = build_now()
    (queued,) = index_build_request(index_type="normal")
    page = staff_client.get(reverse("admin:indexing_indexbuild_changelist")).content.decode()
    assert f'class="build-status build-status-queued" data-build="{queued.pk}"' in page
    assert 'id="build-announcement" role="status" aria-live="polite"' in page
    progress = staff_client.get(reverse("admin:indexing_indexbuild_progress"), {"id": [built.pk]}).json()
    by_id = {b["id"]: b for b in progress["builds"]}
    assert by_id[built.pk] == {
        "id": built.pk,
        "image_type": "defect",
        "status": "ready",
        "status_label": "Ready",
        "is_active": True,
        "done": 6,
        "total": 6,
    }
    assert by_id[queued.pk]["status_label"] == "Queued" and by_id[queued.pk]["is_active"] is False


def test_demo_banner_repeats_the_token_and_the_untrained_warning(settings):
    settings.DEBUG = True  # create_demo_admin refuses otherwise
    admin_out = StringIO()
    call_command("create_demo_admin", stdout=admin_out)
    token = Token.objects.get(user__username="admin").key
    assert token in admin_out.getvalue()
    settings.SIMSEARCH_PRETRAINED = "untrained"
    banner = demo_banner("http://127.0.0.1:8000")
    assert f"Authorization: Token {token}" in banner
    assert "Start:     http://127.0.0.1:8000/\n" in banner
    assert UNTRAINED_WARNING in banner
    settings.SIMSEARCH_PRETRAINED = "laion2b_s34b_b79k"
    assert UNTRAINED_WARNING not in demo_banner("http://127.0.0.1:8000")


def test_rebuild_post_is_queued_on_the_real_broker(staff_client, gallery, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        staff_client.post(reverse("admin:indexing_indexbuild_rebuild"), {"index_type": "defect"})
    build = IndexBuild.objects.get()
    assert build.task_id  # async_task accepted it
    if not __import__("os").environ.get("REDIS_URL"):
        assert OrmQ.objects.count() == 1


def test_activate_action_rolls_back(staff_client, gallery, product, scratch):
    first = build_now()
    from tests.indexing.conftest import add_images

    add_images(product, scratch, 1, start=77)
    second = build_now()
    response = staff_client.post(
        reverse("admin:indexing_indexbuild_changelist"), {"action": "activate_builds", "_selected_action": [first.pk]}
    )
    assert response.status_code == 302
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.is_active and not second.is_active


def test_staff_without_permission_gets_403(client, django_user_model, gallery):
    clerk = django_user_model.objects.create_user("clerk", password="pw-clerk-123", is_staff=True)
    clerk.user_permissions.add(Permission.objects.get(codename="view_indexbuild"))
    client.force_login(clerk)
    assert client.get(reverse("admin:indexing_indexbuild_changelist")).status_code == 200
    assert client.post(reverse("admin:indexing_indexbuild_rebuild"), {"index_type": "all"}).status_code == 403
    assert not IndexBuild.objects.exists()


def test_untrained_builds_are_flagged_in_the_changelist(staff_client, gallery):
    build_now()
    page = staff_client.get(reverse("admin:indexing_indexbuild_changelist")).content.decode()
    assert "⚠ untrained weights" in page and 'id="untrained-warning"' in page


def test_rebuild_index_command_sync(gallery, django_capture_on_commit_callbacks):
    out, err = StringIO(), StringIO()
    with django_capture_on_commit_callbacks() as queued:
        call_command("rebuild_index", "--type", "defect", "--sync", stdout=out, stderr=err)
    assert queued == []  # built here, not also handed to the task queue
    build = IndexBuild.objects.get()
    assert build.status == BuildStatus.READY and f"Build {build.pk}" in out.getvalue()
    assert "untrained" in err.getvalue()


def test_rebuild_index_command_fails_loudly(db):
    with pytest.raises(CommandError, match="failed"):
        call_command("rebuild_index", "--type", "normal", "--sync", stdout=StringIO(), stderr=StringIO())


def test_periodic_schedules_exist_once(db):
    call_command("migrate", verbosity=0)  # post_migrate runs again: still one of each
    assert Schedule.objects.filter(name=STALE_BUILD_SCHEDULE).count() == 1
    purge = Schedule.objects.get(name=PURGE_SCHEDULE)
    assert purge.func == "catalog.tasks.purge_expired_temp_images" and purge.repeats == -1


@pytest.fixture
def legacy_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "legacy"
    folder.mkdir()
    for i in range(3):
        (folder / f"prod1_scratch_{i}.jpg").write_bytes(image_bytes(seed=i))
    (folder / "prod2_dent_0.png").write_bytes(image_bytes("PNG", seed=10))
    (folder / "prod1_normal_0.jpg").write_bytes(image_bytes(seed=20))
    (folder / "prod1_scratch_copy.jpg").write_bytes(image_bytes(seed=0))  # same bytes as _0
    (folder / "notes.txt").write_text("shift log")
    (folder / "unparseable.jpg").write_bytes(image_bytes(seed=30))
    (folder / "prod3_crack_bad.jpg").write_bytes(b"not an image")
    return folder


def test_v1_build_from_a_legacy_folder(settings, legacy_folder):
    settings.INDEX_DIR_V1 = str(legacy_folder)
    build = build_now(engine="v1")
    assert build.status == BuildStatus.FAILED and "decoded" in build.error  # prod3_crack_bad.jpg
    (legacy_folder / "prod3_crack_bad.jpg").unlink()
    build = build_now(engine="v1")
    assert build.status == BuildStatus.READY, build.error
    loaded = index_cache.get(engine="v1", image_type="defect")
    assert loaded.size == 5 and build.vector_count == 5 and build.embedded_count == 4  # the copy is reused
    assert {(r["product"], r["defect"]) for r in loaded.records.values()} == {("prod1", "scratch"), ("prod2", "dent")}
    assert all(Path(r["image_path"]).is_file() for r in loaded.records.values())
    assert loaded.manifest["counts"]["rejected_names"] == 2


def test_v1_without_a_folder_is_refused(settings, db):
    settings.INDEX_DIR_V1 = ""
    with pytest.raises(CommandError, match="INDEX_DIR_V1"):
        call_command("rebuild_index", "--engine", "v1", "--sync", stdout=StringIO(), stderr=StringIO())


def test_import_legacy_gallery(legacy_folder):
    out = StringIO()
    call_command("import_legacy_gallery", str(legacy_folder), stdout=out)
    text = out.getvalue()
    assert "Imported 5 images, skipped 1 duplicates, rejected 3 files" in text, text
    assert set(Product.objects.values_list("product_code", flat=True)) == {"prod1", "prod2"}
    assert set(DefectType.objects.values_list("defect_code", flat=True)) == {"scratch", "dent"}
    assert Image.objects.filter(image_type="normal", defect_type=None).count() == 1
    assert "prod3_crack_bad.jpg" in text and "notes.txt" in text
    again = StringIO()
    call_command("import_legacy_gallery", str(legacy_folder), stdout=again)
    assert "Imported 0 images, skipped 6 duplicates" in again.getvalue()
    assert Image.objects.count() == 5
