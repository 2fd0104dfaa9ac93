"""Django admin as staff use it: changelists, single and bulk uploads, autocomplete."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from catalog.models import Image, ImageType
from catalog.services import image_create
from indexing.models import IndexBuild
from tests.helpers import image_bytes, stored_names

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, staff_user):  # type: ignore[no-untyped-def]
    client.force_login(staff_user)
    return client


def add_images(product, defect_type, count: int, start: int = 0) -> None:  # type: ignore[no-untyped-def]
    for seed in range(start, start + count):
        image_create(data=image_bytes(seed=seed), image_type=ImageType.DEFECT, product=product, defect_type=defect_type)


def changelist_queries(client, url: str) -> int:  # type: ignore[no-untyped-def]
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200
    return len(queries)


def test_image_changelist_shows_thumbnails_without_n_plus_one(staff_client, product, scratch):
    url = reverse("admin:catalog_image_changelist")
    add_images(product, scratch, 2)
    few = changelist_queries(staff_client, url)
    add_images(product, scratch, 15, start=2)
    many = changelist_queries(staff_client, url)
    assert many == few
    page = staff_client.get(url).content.decode()
    # Each row shows its few-KB preview, never the full-size file.
    for image in Image.objects.all():
        assert image.thumbnail.url in page and image.file.url not in page
    assert "긁힘" in page and "Bulk upload images" in page


def test_changelist_filters_and_search(staff_client, product, scratch):
    add_images(product, scratch, 2)
    image_create(data=image_bytes(seed=50), image_type=ImageType.NORMAL, product=product)
    url = reverse("admin:catalog_image_changelist")
    assert staff_client.get(url, {"image_type__exact": "normal"}).context["cl"].result_count == 1
    assert staff_client.get(url, {"q": "scratch"}).context["cl"].result_count == 2
    assert staff_client.get(url, {"q": "브래킷"}).context["cl"].result_count == 3
    assert staff_client.get(url, {"defect_type__id__exact": scratch.pk}).context["cl"].result_count == 2


def test_product_page_links_to_its_filtered_images_instead_of_listing_them(staff_client, product, scratch):
    url = reverse("admin:catalog_product_change", args=[product.pk])
    add_images(product, scratch, 3)
    page = staff_client.get(url).content.decode()
    link = f'href="{reverse("admin:catalog_image_changelist")}?product__id__exact={product.pk}"'
    assert link in page and "3 images of this product" in page
    assert 'alt="image ' not in page  # no thumbnails of the product's images on its own page
    few = changelist_queries(staff_client, url)
    add_images(product, scratch, 10, start=3)
    assert changelist_queries(staff_client, url) == few
    assert "13 images of this product" in staff_client.get(url).content.decode()
    # The link lands on the image list showing exactly this product's images.
    listed = staff_client.get(reverse("admin:catalog_image_changelist"), {"product__id__exact": product.pk})
    assert listed.context["cl"].result_count == 13


def test_image_change_page_has_a_readable_title_and_recorded_fields_read_only(staff_client, product, scratch):
    image = image_create(data=image_bytes(seed=3), image_type=ImageType.DEFECT, product=product, defect_type=scratch)
    response = staff_client.get(reverse("admin:catalog_image_change", args=[image.pk]))
    page = response.content.decode()
    assert f"<h1>bracket-a · defect · scratch (image {image.pk})</h1>" in page
    form_fields = set(response.context["adminform"].form.fields)
    assert form_fields == {"image_type", "product", "defect_type"}
    for name in ["sha256", "width", "height", "file_size", "uploaded_at"]:
        assert f"field-{name}" in page, name  # shown, read-only (not in the form above)
    assert image.sha256 in page and "reuse this image" in page  # the hash is shown, with what it is for
    # Meaningless for a catalog image: no expiry, no registrant, no empty JSON box.
    for name in ["expires_at", "registered_by", "preprocessing_config"]:
        assert f"field-{name}" not in page, name
    # Editing what the image is of still works; a posted hash is ignored.
    response = staff_client.post(
        reverse("admin:catalog_image_change", args=[image.pk]),
        {"image_type": "defect", "product": product.pk, "defect_type": scratch.pk, "sha256": "0" * 64},
    )
    assert response.status_code == 302
    image.refresh_from_db()
    assert image.sha256 != "0" * 64


def test_query_image_page_shows_its_expiry_and_registrant(staff_client, product, staff_user):
    image = image_create(
        data=image_bytes(seed=4),
        image_type=ImageType.QUERY_TEMP,
        product=product,
        defect_type=None,
        expires_at=timezone.now() + timedelta(hours=24),
    )
    Image.objects.filter(pk=image.pk).update(registered_by=staff_user)
    page = staff_client.get(reverse("admin:catalog_image_change", args=[image.pk])).content.decode()
    assert f"<h1>bracket-a · query_temp (image {image.pk})</h1>" in page
    assert "field-expires_at" in page and "purge schedule" in page
    assert "field-registered_by" in page and staff_user.username in page


def test_autocomplete_finds_products_and_defects(staff_client, product, scratch):
    url = reverse("admin:autocomplete")
    found = staff_client.get(
        url, {"app_label": "catalog", "model_name": "image", "field_name": "product", "term": "brack"}
    )
    assert [r["id"] for r in found.json()["results"]] == [str(product.pk)]
    found = staff_client.get(
        url, {"app_label": "catalog", "model_name": "image", "field_name": "defect_type", "term": "긁"}
    )
    assert [r["id"] for r in found.json()["results"]] == [str(scratch.pk)]


def test_admin_add_stores_the_upload(any_storage, staff_client, product, scratch):
    data = image_bytes("PNG", size=(50, 40), seed=5)
    response = staff_client.post(
        reverse("admin:catalog_image_add"),
        {
            "file": SimpleUploadedFile("part.png", data),
            "image_type": "defect",
            "product": product.pk,
            "defect_type": scratch.pk,
            "preprocessing_config": "{}",
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else response
    image = Image.objects.get()
    assert (image.width, image.height, image.file_size) == (50, 40, len(data))
    assert stored_names() == sorted([image.file.name, image.thumbnail.name])
    with image.file.open("rb") as stored:
        assert stored.read() == data


@pytest.mark.parametrize(
    ("data", "image_type", "with_defect", "error_field", "says"),
    [
        (b"GIF89a not really", "defect", True, "file", "not an image"),
        (image_bytes("JPEG", size=(300, 300))[:400], "defect", True, "file", "could not be decoded"),
        (image_bytes(), "defect", False, None, "defect"),
        (image_bytes(), "normal", True, None, "defect"),
    ],
    ids=["not-image", "truncated", "defect-without-type", "normal-with-type"],
)
def test_admin_add_rejects_bad_input_with_a_form_error(
    staff_client, product, scratch, data, image_type, with_defect, error_field, says
):
    response = staff_client.post(
        reverse("admin:catalog_image_add"),
        {
            "file": SimpleUploadedFile("part.jpg", data),
            "image_type": image_type,
            "product": product.pk,
            "defect_type": scratch.pk if with_defect else "",
            "preprocessing_config": "{}",
        },
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    messages = " ".join(errors.get(error_field, []) if error_field else sum(errors.values(), []))
    assert says in messages.lower()
    assert not Image.objects.exists() and stored_names() == []


def test_bulk_upload_creates_many_images(any_storage, staff_client, product, scratch):
    files = [SimpleUploadedFile(f"p{i}.jpg", image_bytes(seed=i)) for i in range(6)]
    page = staff_client.get(reverse("admin:catalog_image_bulk_upload"))
    assert page.status_code == 200 and b'type="file"' in page.content and b"multiple" in page.content
    response = staff_client.post(
        reverse("admin:catalog_image_bulk_upload"),
        {"image_type": "defect", "product": product.pk, "defect_type": scratch.pk, "files": files},
    )
    assert response.status_code == 302
    assert Image.objects.filter(product=product, defect_type=scratch, image_type="defect").count() == 6
    assert len(stored_names()) == 12  # files and thumbnails


def test_bulk_upload_says_the_images_wait_for_a_rebuild_and_offers_one(staff_client, product, scratch):
    files = [SimpleUploadedFile(f"p{i}.jpg", image_bytes(seed=i)) for i in range(3)]
    response = staff_client.post(
        reverse("admin:catalog_image_bulk_upload"),
        {"image_type": "defect", "product": product.pk, "defect_type": scratch.pk, "files": files},
        follow=True,
    )
    page = response.content.decode()
    assert "3 images are not searchable until the next rebuild." in page
    form = re.search(r'<form method="post" action="([^"]+)" class="rebuild-after-upload".*?</form>', page, re.S)
    assert form is not None and form.group(1) == reverse("admin:indexing_indexbuild_rebuild")
    assert 'name="csrfmiddlewaretoken" value="' in form.group(0)
    assert 'name="index_type" value="defect"' in form.group(0)
    # Pressing it queues the defect build.
    assert staff_client.post(form.group(1), {"index_type": "defect"}).status_code == 302
    assert list(IndexBuild.objects.values_list("image_type", "status")) == [("defect", "queued")]


def test_bulk_upload_offers_no_rebuild_button_without_the_permission(client, django_user_model, product):
    editor = django_user_model.objects.create_user("catalog-editor", password="pw-editor-123", is_staff=True)
    editor.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="catalog", codename__in=["add_image", "view_image"])
    )
    client.force_login(editor)
    response = client.post(
        reverse("admin:catalog_image_bulk_upload"),
        {"image_type": "normal", "product": product.pk, "files": [SimpleUploadedFile("n.jpg", image_bytes(seed=9))]},
        follow=True,
    )
    page = response.content.decode()
    assert Image.objects.count() == 1
    assert "1 image is not searchable until the next rebuild." in page
    assert "rebuild-after-upload" not in page


def test_bulk_upload_with_one_bad_file_uploads_nothing_and_names_it(staff_client, product, scratch):
    files = [SimpleUploadedFile(f"p{i}.jpg", image_bytes(seed=i)) for i in range(3)]
    files.append(SimpleUploadedFile("notes.txt", b"shift report"))
    response = staff_client.post(
        reverse("admin:catalog_image_bulk_upload"),
        {"image_type": "defect", "product": product.pk, "defect_type": scratch.pk, "files": files},
    )
    assert response.status_code == 200
    assert "notes.txt" in " ".join(response.context["form"].errors["files"])
    assert not Image.objects.exists() and stored_names() == []


def test_bulk_upload_requires_defect_type_for_defects(staff_client, product):
    response = staff_client.post(
        reverse("admin:catalog_image_bulk_upload"),
        {"image_type": "defect", "product": product.pk, "files": [SimpleUploadedFile("a.jpg", image_bytes())]},
    )
    assert response.status_code == 200 and "defect_type" in response.context["form"].errors
    assert not Image.objects.exists()


def test_admin_is_staff_only(client, plain_user):
    client.force_login(plain_user)
    response = client.get(reverse("admin:catalog_image_bulk_upload"))
    assert response.status_code == 302 and "/login/" in response["Location"]
