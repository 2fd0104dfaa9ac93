"""One click in the admin -> a real qcluster process builds the index into SeaweedFS S3."""

from __future__ import annotations

import os
import signal

import pytest
from django.core.files.storage import default_storage
from django.urls import reverse

from indexing.artifacts import MANIFEST_FILE
from indexing.models import BuildStatus, CachedEmbedding, IndexBuild
from indexing.services import builds_fail_stale, index_build_request
from tests.conftest import running_qcluster
from tests.helpers import build_folders, wait_until
from tests.indexing.conftest import add_images, build_now

pytestmark = pytest.mark.django_db(transaction=True)


def test_rebuild_action_in_the_admin_is_built_by_a_real_qcluster_into_s3(
    client, staff_user, s3_storage, product, scratch, tmp_path
):
    images = add_images(product, scratch, 5)
    client.force_login(staff_user)
    response = client.post(
        reverse("admin:catalog_image_changelist"),
        {"action": "rebuild_defect_index", "_selected_action": [images[0].pk]},
    )
    assert response.status_code == 302 and response["Location"].endswith("/admin/indexing/indexbuild/")
    build = IndexBuild.objects.get()
    assert build.status == BuildStatus.QUEUED and build.task_id
    with running_qcluster(tmp_path / "qcluster.log", **s3_storage.env()):
        wait_until(lambda: IndexBuild.objects.get(pk=build.pk).status not in ("queued", "running"))
    build.refresh_from_db()
    assert build.status == BuildStatus.READY, build.error
    assert build.is_active and build.vector_count == 5 and build.requested_by == staff_user
    # The artifacts are in the bucket, under the test's prefix.
    keys = [
        o["Key"]
        for o in s3_storage.server.client().list_objects_v2(
            Bucket=s3_storage.server.bucket, Prefix=s3_storage.location
        )["Contents"]
    ]
    assert f"{s3_storage.location}/{build.artifact_prefix}/{MANIFEST_FILE}" in keys
    assert default_storage.exists(f"{build.artifact_prefix}/faiss_index.bin")


def test_killed_worker_is_detected_and_the_active_build_stays(product, scratch, tmp_path, settings):
    add_images(product, scratch, 40)
    good = build_now()
    assert good.is_active
    add_images(product, scratch, 40, start=40)
    (build,) = index_build_request(index_type="defect")
    # A bigger model and one image per batch, on the CPU, make the build slow enough to kill
    # part-way (a GPU would finish first).
    env = {
        "SIMSEARCH_MODEL": "ViT-B-32",
        "SIMSEARCH_EMBED_BATCH_SIZE": "1",
        "SIMSEARCH_TORCH_THREADS": "1",
        "SIMSEARCH_DEVICE": "cpu",
    }
    with running_qcluster(tmp_path / "qcluster.log", **env):

        def cached_some_of_its_own_work() -> IndexBuild | None:
            current = IndexBuild.objects.get(pk=build.pk)
            assert current.status in ("queued", "running"), current.error
            # Its model differs from the first build's, so it embeds all 80: wait for its first
            # cached chunks.
            if (
                current.model_fingerprint
                and CachedEmbedding.objects.filter(model_fingerprint=current.model_fingerprint).exists()
            ):
                return current
            return None

        running = wait_until(cached_some_of_its_own_work, timeout=120)
        os.kill(int(running.worker.rpartition(":")[2]), signal.SIGKILL)
        wait_until(lambda: builds_fail_stale() == 1, timeout=10)
    cached_at_kill = CachedEmbedding.objects.filter(model_fingerprint=running.model_fingerprint).count()
    assert 0 < cached_at_kill < 80, "the kill should land part-way through the build"
    build.refresh_from_db()
    assert build.status == BuildStatus.FAILED and "died" in build.error and not build.is_active
    good.refresh_from_db()
    assert good.is_active
    assert build_folders() == {good.artifact_prefix.rsplit("/", 1)[1]}
    # A new rebuild with the same model succeeds and embeds only what the killed build had not cached.
    settings.SIMSEARCH_MODEL, settings.SIMSEARCH_DEVICE = "ViT-B-32", "cpu"
    after = build_now()
    assert after.model_fingerprint == running.model_fingerprint
    assert after.status == BuildStatus.READY and after.vector_count == 80
    assert (after.reused_count, after.embedded_count) == (cached_at_kill, 80 - cached_at_kill)
