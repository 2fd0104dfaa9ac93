"""A temporary query image never takes a catalog object with it (issue 8, item 1): the register
endpoint refuses server-managed and catalog keys, deleting a row keeps an object another row still
uses, and a command reports rows that share an object. Local folder and SeaweedFS S3."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from catalog.models import Image, ImageType
from catalog.services import image_create, image_delete, temp_images_purge
from tests.helpers import image_bytes

pytestmark = pytest.mark.django_db

REGISTER = "/api/worker/image/register/"


def register(api, storage_url: str):  # type: ignore[no-untyped-def]
    return api.post(
        REGISTER,
        {"storage_url": storage_url, "image_type": "query_temp", "product_code": "bracket-a"},
        format="json",
    )


def alias_of(image: Image, name: str) -> Image:
    """A query_temp row pointing at `name`, as the register endpoint created them before the fix."""
    return Image.objects.create(
        file=name,
        image_type=ImageType.QUERY_TEMP,
        product=image.product,
        width=image.width,
        height=image.height,
        file_size=image.file_size,
        sha256=image.sha256,
        expires_at=timezone.now() - timedelta(minutes=1),
    )


@pytest.mark.parametrize("field", ["file", "thumbnail"])
def test_a_catalog_key_cannot_be_registered_and_the_catalog_file_survives_the_purge(
    any_storage, staff_api, product, scratch, field, django_capture_on_commit_callbacks
):
    catalog = image_create(data=image_bytes(seed=1), image_type=ImageType.DEFECT, product=product, defect_type=scratch)
    key = getattr(catalog, field).name
    # The link a search result hands every signed-in user, and the bare key.
    for storage_url in (default_storage.url(key), key):
        if storage_url.startswith("/"):
            storage_url = f"http://testserver{storage_url}"
        response = register(staff_api, storage_url)
        assert response.status_code == 400, response.content
        body = response.json()
        assert "storage_url" in body["errors"] and "cannot be registered" in body["detail"]
    assert not Image.objects.filter(image_type=ImageType.QUERY_TEMP).exists()
    with django_capture_on_commit_callbacks(execute=True):
        temp_images_purge(now=timezone.now() + timedelta(days=30))
    assert default_storage.exists(catalog.file.name) and default_storage.exists(catalog.thumbnail.name)


def test_server_managed_prefixes_are_refused_even_without_a_catalog_row(any_storage, settings, staff_api, product):
    data = image_bytes(seed=2)
    for key in ("images/normal/2026/01/orphan.jpg", "thumbnails/x/y.jpg", f"{settings.SIMSEARCH_INDEX_PREFIX}/a.jpg"):
        saved = default_storage.save(key, ContentFile(data))
        response = register(staff_api, saved)
        assert response.status_code == 400 and "managed by the server" in response.json()["detail"], response.content
    own = default_storage.save("line-uploads/cam1/frame-7.jpg", ContentFile(data))
    assert register(staff_api, own).status_code == 201


def test_a_catalog_file_outside_the_managed_prefixes_is_refused_too(any_storage, staff_api, product, scratch):
    catalog = image_create(data=image_bytes(seed=3), image_type=ImageType.DEFECT, product=product, defect_type=scratch)
    # A row whose file lives elsewhere (imported or moved by hand).
    moved = default_storage.save("legacy/part-3.jpg", ContentFile(image_bytes(seed=3)))
    Image.objects.filter(pk=catalog.pk).update(file=moved)
    response = register(staff_api, moved)
    assert response.status_code == 400 and f"catalog image {catalog.pk}" in response.json()["detail"]


@pytest.mark.parametrize("shared", ["file", "thumbnail"])
def test_deleting_one_of_two_rows_sharing_an_object_keeps_it(
    any_storage, product, scratch, shared, django_capture_on_commit_callbacks
):
    catalog = image_create(data=image_bytes(seed=4), image_type=ImageType.DEFECT, product=product, defect_type=scratch)
    name = getattr(catalog, shared).name
    temp = alias_of(catalog, name)
    with django_capture_on_commit_callbacks(execute=True):
        assert temp_images_purge() == 1
    assert not Image.objects.filter(pk=temp.pk).exists()
    assert default_storage.exists(name), "the purge of the query image deleted the catalog's object"

    # The other way round: the catalog row goes, the query image still uses the object.
    again = alias_of(catalog, name)
    with django_capture_on_commit_callbacks(execute=True):
        image_delete(image=Image.objects.get(pk=catalog.pk))
    assert default_storage.exists(name)
    other = catalog.thumbnail.name if shared == "file" else catalog.file.name
    assert not default_storage.exists(other)  # the object nobody else uses went with the row
    with django_capture_on_commit_callbacks(execute=True):
        image_delete(image=again)
    assert not default_storage.exists(name)  # the last row took it


def test_api_delete_of_an_aliasing_query_image_keeps_the_catalog_file(
    any_storage, staff_api, product, scratch, django_capture_on_commit_callbacks
):
    catalog = image_create(data=image_bytes(seed=5), image_type=ImageType.DEFECT, product=product, defect_type=scratch)
    temp = alias_of(catalog, catalog.file.name)
    with django_capture_on_commit_callbacks(execute=True):
        assert staff_api.delete(f"/api/images/{temp.pk}/").status_code == 204
    assert default_storage.exists(catalog.file.name)


def test_check_image_aliases_reports_rows_sharing_an_object(product, scratch):
    first = image_create(data=image_bytes(seed=6), image_type=ImageType.DEFECT, product=product, defect_type=scratch)
    second = image_create(data=image_bytes(seed=7), image_type=ImageType.DEFECT, product=product, defect_type=scratch)
    out = StringIO()
    call_command("check_image_aliases", stdout=out)
    assert "No stored object" in out.getvalue()

    file_alias = alias_of(first, first.file.name)
    preview_alias = alias_of(second, second.thumbnail.name)
    cross = alias_of(second, "line-uploads/x.jpg")
    Image.objects.filter(pk=cross.pk).update(thumbnail=first.file.name)  # one row's file is another's preview
    out = StringIO()
    with pytest.raises(CommandError, match="2 stored object"):
        call_command("check_image_aliases", stdout=out)
    lines = out.getvalue().splitlines()
    assert f"{first.file.name}: images {', '.join(map(str, sorted([first.pk, file_alias.pk, cross.pk])))}" in lines
    assert f"{second.thumbnail.name}: images {second.pk}, {preview_alias.pk}" in lines
    assert len(lines) == 2


def test_a_line_upload_registered_twice_is_not_reported(product, scratch):
    image = image_create(data=image_bytes(seed=8), image_type=ImageType.DEFECT, product=product, defect_type=scratch)
    alias_of(image, "line-uploads/cam1/frame.jpg")
    alias_of(image, "line-uploads/cam1/frame.jpg")
    out = StringIO()
    call_command("check_image_aliases", stdout=out)
    assert "No stored object" in out.getvalue()


def test_a_link_in_the_media_folder_cannot_lead_a_query_image_to_a_catalog_file(
    settings, staff_api, product, scratch, django_capture_on_commit_callbacks
):
    """Local storage only (object stores have no links): a line's folder that links into images/,
    or out of the media folder, is judged by the file it opens."""
    import os

    catalog = image_create(data=image_bytes(seed=9), image_type=ImageType.DEFECT, product=product, defect_type=scratch)
    media = settings.MEDIA_ROOT
    os.makedirs(media / "line-uploads" / "cam1")
    os.symlink(media / "images", media / "line-uploads" / "cam1" / "imglink")
    through_link = "line-uploads/cam1/imglink/" + catalog.file.name.removeprefix("images/")
    response = register(staff_api, through_link)
    assert response.status_code == 400 and "managed by the server" in response.json()["detail"], response.content
    os.symlink("/etc/hostname", media / "line-uploads" / "cam1" / "outside.png")
    assert register(staff_api, "line-uploads/cam1/outside.png").status_code == 404
    # A row that got there before the check: deleting it keeps the catalog file.
    old = alias_of(catalog, through_link)
    with django_capture_on_commit_callbacks(execute=True):
        image_delete(image=old)
    assert default_storage.exists(catalog.file.name)
