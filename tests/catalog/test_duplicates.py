"""Identical bytes for one product are one catalog image (issue 8, item 3): the service, the API,
the admin's add form and bulk upload, and concurrent uploads."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from catalog import services
from catalog.models import Image, ImageType, Product
from catalog.services import UploadedImage, image_create, images_bulk_create, images_create
from simsearch_project.errors import Conflict
from tests.helpers import image_bytes, stored_names


@pytest.fixture
def staff_client(client, staff_user):  # type: ignore[no-untyped-def]
    client.force_login(staff_user)
    return client


@pytest.mark.django_db
def test_the_same_bytes_twice_for_one_product_is_a_conflict_naming_the_image(any_storage, product, scratch):
    data = image_bytes(seed=1)
    first = image_create(data=data, image_type=ImageType.DEFECT, product=product, defect_type=scratch)
    before = stored_names()
    for image_type, defect_type in ((ImageType.DEFECT, scratch), (ImageType.NORMAL, None)):
        with pytest.raises(Conflict) as caught:
            image_create(data=data, image_type=image_type, product=product, defect_type=defect_type, name="again.jpg")
        assert caught.value.code == "duplicate_image" and caught.value.details == {"existing_image_id": first.pk}
        assert f"image {first.pk}" in caught.value.message and "again.jpg" in caught.value.message
    assert Image.objects.count() == 1 and stored_names() == before

    # Another product may have the same picture; query images are exempt.
    other = Product.objects.create(product_code="gear-b", product_name="기어 B")
    image_create(data=data, image_type=ImageType.DEFECT, product=other, defect_type=scratch)
    expires = timezone.now() + timedelta(hours=1)
    for _ in range(2):
        image_create(data=data, image_type=ImageType.QUERY_TEMP, product=product, expires_at=expires)
    assert Image.objects.count() == 4


@pytest.mark.django_db
def test_a_repeat_within_one_upload_is_a_conflict_and_stores_nothing(product, scratch):
    data = image_bytes(seed=2)
    with pytest.raises(Conflict, match="b.jpg is the same picture .* as a.jpg"):
        images_create(
            uploads=[UploadedImage("a.jpg", data), UploadedImage("b.jpg", data)],
            image_type=ImageType.DEFECT,
            product=product,
            defect_type=scratch,
        )
    assert not Image.objects.exists() and stored_names() == []


@pytest.mark.django_db
def test_bulk_create_skips_duplicates_and_reports_what_they_match(any_storage, product, scratch):
    existing = image_create(data=image_bytes(seed=3), image_type=ImageType.DEFECT, product=product, defect_type=scratch)
    uploads = [
        UploadedImage("new-a.jpg", image_bytes(seed=4)),
        UploadedImage("old.jpg", image_bytes(seed=3)),
        UploadedImage("new-a-copy.jpg", image_bytes(seed=4)),
        UploadedImage("new-b.jpg", image_bytes(seed=5)),
    ]
    result = images_bulk_create(uploads=uploads, image_type=ImageType.DEFECT, product=product, defect_type=scratch)
    new_a, new_b = result.created
    assert [(s.name, s.existing_image_id) for s in result.skipped] == [
        ("old.jpg", existing.pk),
        ("new-a-copy.jpg", new_a.pk),
    ]
    assert Image.objects.count() == 3 and len(stored_names()) == 6
    everything_known = images_bulk_create(
        uploads=uploads[:2], image_type=ImageType.DEFECT, product=product, defect_type=scratch
    )
    assert everything_known.created == [] and len(everything_known.skipped) == 2 and len(stored_names()) == 6


@pytest.mark.django_db(transaction=True)
def test_concurrent_uploads_of_one_picture_make_one_row(monkeypatch, product, scratch):
    """Both uploads pass the first check before either saves; the check repeated under the
    product's row lock lets one through, and the other's stored files are removed again."""
    data = image_bytes(seed=6)
    both_stored = threading.Barrier(2, timeout=30)
    real_store = services._store

    def store_then_wait(**kwargs):  # type: ignore[no-untyped-def]
        real_store(**kwargs)
        both_stored.wait()  # neither has saved its row yet

    monkeypatch.setattr(services, "_store", store_then_wait)
    outcomes: list[object] = []

    def upload() -> None:
        try:
            outcomes.append(image_create(data=data, image_type=ImageType.DEFECT, product=product, defect_type=scratch))
        except Exception as exc:
            outcomes.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=upload) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    created = [o for o in outcomes if isinstance(o, Image)]
    refused = [o for o in outcomes if not isinstance(o, Image)]
    assert len(created) == 1 and len(refused) == 1, outcomes
    assert isinstance(refused[0], Conflict) and refused[0].details == {"existing_image_id": created[0].pk}
    assert list(Image.objects.values_list("pk", flat=True)) == [created[0].pk]
    assert stored_names() == sorted([created[0].file.name, created[0].thumbnail.name])


@pytest.mark.django_db
def test_api_upload_of_a_duplicate_is_409_naming_the_existing_image(any_storage, staff_api, product, scratch):
    data = image_bytes("PNG", seed=7)
    fields = {"image_type": "defect", "product_code": "bracket-a", "defect_code": "scratch"}
    first = staff_api.post("/api/images/", {"file": SimpleUploadedFile("a.png", data), **fields}, format="multipart")
    assert first.status_code == 201, first.content
    again = staff_api.post("/api/images/", {"file": SimpleUploadedFile("b.png", data), **fields}, format="multipart")
    assert again.status_code == 409, again.content
    body = again.json()
    assert body["code"] == "duplicate_image" and body["existing_image_id"] == first.json()["id"]
    assert f"image {first.json()['id']}" in body["detail"]
    assert Image.objects.count() == 1 and len(stored_names()) == 2


@pytest.mark.django_db
def test_openapi_documents_the_duplicate_409(client):
    spec = client.get("/api/schema/?format=json").json()
    upload = next(v for k, v in spec["paths"].items() if k.rstrip("/") == "/api/images")["post"]
    assert "409" in upload["responses"]
    assert "existing_image_id" in str(spec["components"]["schemas"]["DuplicateImageError"])


@pytest.mark.django_db
def test_admin_add_of_a_duplicate_is_a_form_error_linking_the_existing_image(staff_client, product, scratch):
    data = image_bytes(seed=8)
    existing = image_create(data=data, image_type=ImageType.DEFECT, product=product, defect_type=scratch)
    response = staff_client.post(
        reverse("admin:catalog_image_add"),
        {
            "file": SimpleUploadedFile("part.jpg", data),
            "image_type": "normal",
            "product": product.pk,
            "defect_type": "",
            "preprocessing_config": "{}",
        },
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["file"]
    link = reverse("admin:catalog_image_change", args=[existing.pk])
    assert f'<a href="{link}">image {existing.pk}</a>' in errors[0]
    assert f'<a href="{link}">image {existing.pk}</a>' in response.content.decode()  # rendered as a link
    assert Image.objects.count() == 1 and len(stored_names()) == 2


@pytest.mark.django_db
def test_admin_bulk_upload_skips_duplicates_and_lists_them(staff_client, product, scratch):
    existing = image_create(data=image_bytes(seed=9), image_type=ImageType.DEFECT, product=product, defect_type=scratch)
    files = [
        SimpleUploadedFile("fresh.jpg", image_bytes(seed=10)),
        SimpleUploadedFile("known.jpg", image_bytes(seed=9)),
        SimpleUploadedFile("fresh-again.jpg", image_bytes(seed=10)),
    ]
    response = staff_client.post(
        reverse("admin:catalog_image_bulk_upload"),
        {"image_type": "defect", "product": product.pk, "defect_type": scratch.pk, "files": files},
        follow=True,
    )
    assert response.status_code == 200
    fresh = Image.objects.exclude(pk=existing.pk).get()
    page = response.content.decode()
    assert "Uploaded 1 images." in page and "Skipped 2 duplicate file(s)" in page
    for name, image_id in (("known.jpg", existing.pk), ("fresh-again.jpg", fresh.pk)):
        link = reverse("admin:catalog_image_change", args=[image_id])
        assert f'{name} (<a href="{link}">image {image_id}</a>)' in page
    assert Image.objects.count() == 2 and len(stored_names()) == 4
