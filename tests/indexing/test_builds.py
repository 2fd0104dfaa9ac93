"""Index builds against the real database and storage (local folder and SeaweedFS S3)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from datetime import timedelta

import pytest
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.utils import timezone

from catalog.models import DefectType
from catalog.services import image_delete
from catalog.storage import read_object
from indexing.artifacts import MANIFEST_FILE, METADATA_FILE
from indexing.models import BuildStatus, CachedEmbedding, IndexBuild
from indexing.selectors import gallery_rows
from indexing.services import builds_fail_stale, index_build_activate, index_build_request, index_build_run
from search_api.index_cache import index_cache
from simsearch_project.errors import Conflict
from tests.conftest import free_ports
from tests.helpers import build_folders
from tests.indexing.conftest import add_images, build_now

pytestmark = pytest.mark.django_db


def served(image_type: str = "defect"):  # type: ignore[no-untyped-def]
    index_cache.reset()
    return index_cache.get(engine="v2", image_type=image_type)


def test_gallery_rows_is_one_query_whatever_the_size(django_assert_num_queries, product, scratch):
    add_images(product, scratch, 3)
    with django_assert_num_queries(1):
        assert len(gallery_rows(image_type="defect")) == 3
    add_images(product, scratch, 25, start=3)
    with django_assert_num_queries(1):
        rows = gallery_rows(image_type="defect")
    assert len(rows) == 28 and rows[0].defect_name_ko == "긁힘" and rows[0].product_code == "bracket-a"


def test_a_build_writes_its_files_then_becomes_the_active_ready_build(settings, any_storage, gallery):
    build = build_now()
    assert build.status == BuildStatus.READY and build.is_active, build.error
    assert (build.vector_count, build.embedded_count, build.reused_count) == (6, 6, 0)
    assert build.progress_done == build.progress_total == 6
    assert build.is_untrained and build.model_name == "simsearch-tiny" and build.model_fingerprint
    for name in ("faiss_index.bin", "embeddings.pt", METADATA_FILE, MANIFEST_FILE):
        assert default_storage.exists(f"{build.artifact_prefix}/{name}")
    metadata_bytes = read_object(f"{build.artifact_prefix}/{METADATA_FILE}")
    assert "긁힘".encode() in metadata_bytes  # UTF-8, not \\u escapes
    records = json.loads(metadata_bytes)
    assert sorted(r["image_id"] for r in records) == sorted(i.pk for i in gallery)
    assert records[0]["product_name"] == "브래킷 A" and records[0]["defect_code"] == "scratch"
    manifest = json.loads(read_object(f"{build.artifact_prefix}/{MANIFEST_FILE}"))
    assert manifest["build_id"] == build.pk and manifest["model_fingerprint"] == build.model_fingerprint
    assert manifest["counts"]["vector_count"] == 6 and manifest["timings"]["embed_s"] >= 0
    assert build.timings["total_s"] >= build.timings["embed_s"]
    loaded = served()
    assert loaded is not None and loaded.build_id == build.pk and loaded.size == 6
    # The files were packed on local disk, streamed to storage, and the packing folder is gone.
    assert not list(settings.DATA_DIR.glob(".pack-*"))


def test_incremental_rebuilds_embed_only_what_changed(product, scratch):
    images = add_images(product, scratch, 8)
    assert build_now().embedded_count == 8
    unchanged = build_now()
    assert (unchanged.embedded_count, unchanged.reused_count, unchanged.vector_count) == (0, 8, 8)

    add_images(product, scratch, 1, start=100)
    added = build_now()
    assert (added.embedded_count, added.reused_count, added.vector_count) == (1, 8, 9)

    gone = images[0]
    image_delete(image=gone)
    dent = DefectType.objects.create(defect_code="dent", defect_name_ko="찍힘", defect_name_en="Dent")
    relabelled = images[1]
    relabelled.defect_type = dent
    relabelled.save()
    after = build_now()
    assert (after.embedded_count, after.vector_count) == (0, 8)
    loaded = served()
    assert gone.pk not in loaded.records and loaded.index.ntotal == 8
    assert loaded.records[relabelled.pk]["defect_code"] == "dent"
    assert loaded.records[relabelled.pk]["defect_name"] == "찍힘"
    assert CachedEmbedding.objects.count() == 9


def test_missing_files_are_counted_not_fatal(gallery):
    default_storage.delete(gallery[0].file.name)
    build = build_now()
    assert build.status == BuildStatus.READY and build.missing_count == 1 and build.vector_count == 5


def test_a_bad_image_in_the_gallery_fails_the_build_and_keeps_the_active_one(any_storage, product, scratch, gallery):
    good = build_now()
    assert served().build_id == good.pk
    broken = add_images(product, scratch, 1, start=50)[0]
    default_storage.delete(broken.file.name)
    default_storage.save(broken.file.name, __import__("io").BytesIO(b"this is not a jpeg any more"))
    failed = build_now()
    assert failed.status == BuildStatus.FAILED and "decoded" in failed.error and not failed.is_active
    good.refresh_from_db()
    assert good.is_active and served().build_id == good.pk
    assert build_folders() == {folder_of(good)}


def folder_of(build: IndexBuild) -> str:
    return build.artifact_prefix.rsplit("/", 1)[1]


def test_a_build_failed_by_the_stale_sweep_after_writing_removes_its_files(any_storage, gallery):
    """The sweep decides a build is dead (no heartbeat) just after it wrote its files: the build
    must stay failed, never become active, and its files must go."""
    good = build_now()
    (build,) = index_build_request(index_type="defect", enqueue=False)
    swept: list[str] = []

    def sweep_once_written(done: int, total: int) -> None:
        current = IndexBuild.objects.get(pk=build.pk)
        if (
            not swept
            and current.artifact_prefix
            and default_storage.exists(f"{current.artifact_prefix}/{MANIFEST_FILE}")
        ):
            long_ago = timezone.now() - timedelta(hours=1)
            IndexBuild.objects.filter(pk=build.pk).update(heartbeat_at=long_ago, worker="another-host:1")
            assert builds_fail_stale() == 1
            swept.append(current.artifact_prefix)

    failed = index_build_run(build_id=build.pk, on_progress=sweep_once_written)
    assert swept, "the build never wrote its files"
    assert failed.status == BuildStatus.FAILED and not failed.is_active and "stopped reporting" in failed.error
    good.refresh_from_db()
    assert good.is_active and served().build_id == good.pk
    assert build_folders() == {folder_of(good)}


def test_storage_outage_mid_rebuild_keeps_the_loaded_build_serving(settings, s3_storage, gallery):
    good = build_now()
    assert index_cache.get(engine="v2", image_type="defect").build_id == good.pk
    dead = s3_storage.server.storage_settings(s3_storage.location)
    dead["OPTIONS"]["endpoint_url"] = f"http://127.0.0.1:{free_ports(1)[0]}"
    settings.STORAGES = {**settings.STORAGES, "default": dead}
    failed = build_now()
    assert failed.status == BuildStatus.FAILED and failed.error
    good.refresh_from_db()
    assert good.is_active
    assert index_cache.get(engine="v2", image_type="defect").build_id == good.pk


def test_empty_gallery_fails_with_a_clear_message(db):
    build = build_now()
    assert build.status == BuildStatus.FAILED and "no defect images" in build.error.lower()


def test_requests_for_the_same_type_never_run_twice(product, scratch, gallery):
    first = index_build_request(index_type="defect")
    again = index_build_request(index_type="all")  # normal first, then the pending defect build
    assert again[1].pk == first[0].pk and again[0].image_type == "normal"
    assert IndexBuild.objects.filter(status=BuildStatus.QUEUED).count() == 2
    index_build_run(build_id=first[0].pk)
    rerun = index_build_run(build_id=first[0].pk)  # a re-delivered task must not build again
    assert rerun.status == BuildStatus.READY and IndexBuild.objects.filter(status=BuildStatus.READY).count() == 1
    with pytest.raises(IntegrityError), transaction.atomic():
        IndexBuild.objects.create(image_type="normal", engine="v2", model_name="x", pretrained="y")


def test_activation_is_exclusive_and_rollback_works(gallery, product, scratch):
    first = build_now()
    add_images(product, scratch, 1, start=99)
    second = build_now()
    first.refresh_from_db()
    assert second.is_active and not first.is_active
    index_build_activate(build=first)
    second.refresh_from_db()
    assert not second.is_active and IndexBuild.objects.get(is_active=True).pk == first.pk
    assert served().build_id == first.pk
    with pytest.raises(IntegrityError), transaction.atomic():
        IndexBuild.objects.filter(pk=second.pk).update(is_active=True)
    failed = IndexBuild.objects.create(image_type="normal", model_name="m", pretrained="p", status=BuildStatus.FAILED)
    with pytest.raises(Conflict):
        index_build_activate(build=failed)


def test_stuck_builds_are_marked_failed(settings, gallery):
    dead = subprocess.Popen(["true"])
    dead.wait()
    running = IndexBuild.objects.create(
        image_type="defect",
        model_name="m",
        pretrained="p",
        status=BuildStatus.RUNNING,
        worker=f"{socket.gethostname()}:{dead.pid}",
    )
    assert builds_fail_stale() == 1
    running.refresh_from_db()
    assert running.status == BuildStatus.FAILED and "died" in running.error
    # A new request is possible straight away.
    assert index_build_request(index_type="defect")[0].pk != running.pk


def test_serving_survives_a_database_outage_from_its_local_cache(settings, tmp_path, gallery):
    build = build_now()
    assert served().build_id == build.pk  # loads and caches locally
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "simsearch_project.test_settings",
        "SIMSEARCH_DATA_DIR": str(tmp_path),
        "DATABASE_URL": f"postgres://nobody@127.0.0.1:{free_ports(1)[0]}/none",
    }
    script = (
        "from search_api.index_cache import index_cache as c; s = c.state(); "
        "print(sorted((k, v.build_id) for k, v in s.loaded.items())); print(s.degraded)"
    )
    result = subprocess.run(
        [os.sys.executable, "manage.py", "shell", "-c", script],
        cwd=str(settings.BASE_DIR),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"[(('v2', 'defect'), {build.pk})]" in result.stdout
    assert "database unreachable" in result.stdout


def test_opt_in_rebuild_at_startup_queues_one_build_per_type(settings, gallery):
    settings.SIMSEARCH_REBUILD_ON_STARTUP = True
    assert served() is None  # the first look at the indexes asks for a rebuild
    index_cache.reset()
    index_cache.get(engine="v2", image_type="defect")  # a second serving process does the same
    pending = IndexBuild.objects.filter(status=BuildStatus.QUEUED)
    assert sorted(pending.values_list("image_type", flat=True)) == ["defect", "normal"]


def test_no_startup_rebuild_by_default(gallery):
    assert served() is None
    assert not IndexBuild.objects.exists()


def test_other_threads_answer_from_the_previous_build_while_one_thread_loads_the_new_one(
    settings, monkeypatch, gallery, product, scratch
):
    """gthread workers: the thread that notices a new build loads it; the others go on answering
    from the build already loaded instead of queueing behind the load (which takes seconds at 1M)."""
    import threading
    import time

    from search_api import index_cache as cache_module

    first = build_now()
    assert served().build_id == first.pk
    add_images(product, scratch, 1, start=50)
    second = build_now()
    settings.SIMSEARCH_INDEX_POLL_SECONDS = 0
    loading, release = threading.Event(), threading.Event()
    real_unpack = cache_module.unpack_artifacts

    def slow_unpack(*args, **kwargs):  # type: ignore[no-untyped-def]
        loading.set()
        release.wait(timeout=10)
        return real_unpack(*args, **kwargs)

    monkeypatch.setattr(cache_module, "unpack_artifacts", slow_unpack)
    answered: list[tuple[int, float]] = []

    def other_request() -> None:
        loading.wait(timeout=10)
        started = time.monotonic()
        answered.append((index_cache.get(engine="v2", image_type="defect").build_id, time.monotonic() - started))
        release.set()

    other = threading.Thread(target=other_request)
    other.start()
    reloaded = index_cache.get(engine="v2", image_type="defect")  # this thread loads the new build
    other.join(timeout=20)
    assert reloaded.build_id == second.pk
    assert answered and answered[0][0] == first.pk and answered[0][1] < 2.0


def test_requests_that_reach_a_fresh_process_while_it_loads_wait_for_the_first_load(monkeypatch, gallery):
    """The first requests to a new worker arrive together: one loads the index, the others wait
    for it. They were answered 503 "no active index" (3 of 327 requests in benchmarks/http_load)
    because the loader marked the check done before the index was there."""
    import threading

    from search_api import index_cache as cache_module

    build = build_now()
    index_cache.reset()
    loading = threading.Event()
    real_unpack = cache_module.unpack_artifacts

    def slow_unpack(*args, **kwargs):  # type: ignore[no-untyped-def]
        loading.set()
        time.sleep(0.5)
        return real_unpack(*args, **kwargs)

    monkeypatch.setattr(cache_module, "unpack_artifacts", slow_unpack)
    answered = []

    def second_request() -> None:
        assert loading.wait(timeout=10)
        answered.append(index_cache.get(engine="v2", image_type="defect"))

    other = threading.Thread(target=second_request)
    other.start()
    first = index_cache.get(engine="v2", image_type="defect")
    other.join(timeout=20)
    assert first is not None and first.build_id == build.pk
    assert len(answered) == 1 and answered[0] is not None and answered[0].build_id == build.pk
