"""Old builds are pruned (rows, stored files, local copies); the active build and the rollback
history are kept."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.files.storage import FileSystemStorage, default_storage
from django.core.management import CommandError, call_command

from catalog.models import Image
from indexing import artifact_store
from indexing.artifacts import MANIFEST_FILE
from indexing.models import BuildStatus, IndexBuild
from indexing.services import builds_prune, index_build_activate
from search_api.index_cache import index_cache
from simsearch_project.errors import NotFound
from tests.indexing.conftest import add_images, build_now

pytestmark = pytest.mark.django_db


def builds_in_a_row(count: int, product, scratch) -> list[IndexBuild]:  # type: ignore[no-untyped-def]
    builds = []
    for _ in range(count):
        # A picture the catalog does not have yet: the same bytes again would be a duplicate upload.
        add_images(product, scratch, 1, start=100 + Image.objects.count())
        builds.append(build_now())
    return builds


def files_exist(build: IndexBuild) -> bool:
    return default_storage.exists(f"{build.artifact_prefix}/{MANIFEST_FILE}")


def test_each_build_prunes_beyond_the_kept_history(any_storage, settings, product, scratch):
    settings.SIMSEARCH_KEEP_BUILDS = 2
    add_images(product, None, 2, image_type="normal")
    normal = build_now("normal")
    failed = IndexBuild.objects.create(image_type="defect", model_name="m", pretrained="p", status=BuildStatus.FAILED)
    first, second, third, fourth = builds_in_a_row(4, product, scratch)
    assert fourth.is_active
    remaining = set(IndexBuild.objects.values_list("pk", flat=True))
    # The active build, the two newest others, and what is not a ready defect build.
    assert remaining == {fourth.pk, third.pk, second.pk, normal.pk, failed.pk}
    assert not files_exist(first)
    assert all(files_exist(build) for build in (second, third, fourth, normal))


def test_the_active_build_is_kept_however_old(settings, product, scratch):
    settings.SIMSEARCH_KEEP_BUILDS = 10
    first, second, third = builds_in_a_row(3, product, scratch)
    index_build_activate(build=first)  # a rollback to the oldest
    assert builds_prune(keep=1) == [second.pk]
    assert set(IndexBuild.objects.values_list("pk", flat=True)) == {first.pk, third.pk}
    assert IndexBuild.objects.get(is_active=True).pk == first.pk
    assert not files_exist(second) and files_exist(first)


def test_a_build_rolled_back_to_counts_as_recent(settings, product, scratch):
    """Rolled back to the old good build, then a new build: the good one stays in the history
    even though it finished first."""
    settings.SIMSEARCH_KEEP_BUILDS = 10
    good, _, bad = builds_in_a_row(3, product, scratch)
    index_build_activate(build=good)  # `bad` misbehaves: roll back
    settings.SIMSEARCH_KEEP_BUILDS = 1
    (newest,) = builds_in_a_row(1, product, scratch)
    assert set(IndexBuild.objects.values_list("pk", flat=True)) == {newest.pk, good.pk}
    assert not IndexBuild.objects.filter(pk=bad.pk).exists()


class DeleteRefusingStorage(FileSystemStorage):
    """Local storage whose deletes fail (an object store refusing them)."""

    def delete(self, name: str) -> None:
        raise OSError("access denied")


def test_files_that_cannot_be_deleted_are_logged_and_the_prune_goes_on(settings, product, scratch, caplog):
    settings.SIMSEARCH_KEEP_BUILDS = 10
    first, second, _ = builds_in_a_row(3, product, scratch)
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": f"{__name__}.DeleteRefusingStorage", "OPTIONS": {"location": settings.MEDIA_ROOT}},
    }
    assert builds_prune(keep=0) == [second.pk, first.pk]
    assert IndexBuild.objects.count() == 1
    logged = " ".join(record.getMessage() for record in caplog.records if record.levelname == "ERROR")
    assert first.artifact_prefix in logged and second.artifact_prefix in logged and "by hand" in logged


def test_activating_a_build_pruned_meanwhile_is_404_and_changes_nothing(settings, product, scratch):
    settings.SIMSEARCH_KEEP_BUILDS = 10
    old, current = builds_in_a_row(2, product, scratch)
    seen_by_staff = IndexBuild.objects.get(pk=old.pk)  # the page a user opened before the prune
    builds_prune(keep=0)
    with pytest.raises(NotFound) as caught:
        index_build_activate(build=seen_by_staff)
    assert "no longer exists" in caught.value.message
    assert IndexBuild.objects.get(is_active=True).pk == current.pk


def test_prune_command(settings, product, scratch):
    settings.SIMSEARCH_KEEP_BUILDS = 10
    builds = builds_in_a_row(3, product, scratch)
    out = StringIO()
    call_command("prune_index_builds", "--keep", "0", stdout=out)
    assert f"Removed 2 old builds: {builds[1].pk}, {builds[0].pk}." in out.getvalue()
    again = StringIO()
    call_command("prune_index_builds", "--keep", "0", stdout=again)
    assert "Nothing to remove" in again.getvalue()
    with pytest.raises(CommandError):
        call_command("prune_index_builds", "--keep", "-1", stdout=StringIO())


def test_serving_processes_drop_local_copies_of_pruned_builds(settings, tmp_path, product, scratch):
    settings.SIMSEARCH_INDEX_CACHE_DIR = tmp_path / "index_cache"
    settings.SIMSEARCH_KEEP_BUILDS = 0
    (first,) = builds_in_a_row(1, product, scratch)
    index_cache.reset()
    assert index_cache.get(engine="v2", image_type="defect").build_id == first.pk
    assert artifact_store.cache_build_ids() == [first.pk]
    (second,) = builds_in_a_row(1, product, scratch)  # activates the new build, prunes the first
    assert not IndexBuild.objects.filter(pk=first.pk).exists()
    index_cache.refresh()
    assert index_cache.get(engine="v2", image_type="defect").build_id == second.pk
    assert artifact_store.cache_build_ids() == [second.pk]
