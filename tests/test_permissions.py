"""Who may do what (issue 8, item 7): every write and every index-control endpoint checks a Django
permission, in the API and in the admin alike, and the plant's roles (`manage.py create_roles`)
give each kind of user exactly what it needs."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from catalog.models import DefectType, Image, ImageType, Product
from catalog.roles import CATALOG_EDITOR, INDEX_OPERATOR, LINE_PC, ROLES
from catalog.services import image_create
from indexing.models import IndexBuild
from tests.conftest import token_client
from tests.helpers import image_bytes
from tests.indexing.conftest import add_images, build_now

pytestmark = pytest.mark.django_db


def upload(api, **fields):  # type: ignore[no-untyped-def]
    return api.post(
        "/api/images/",
        {"file": SimpleUploadedFile("part.jpg", image_bytes(seed=fields.pop("seed", 9))), **fields},
        format="multipart",
    )


def register(api, key: str):  # type: ignore[no-untyped-def]
    return api.post(
        "/api/worker/image/register/",
        {"storage_url": key, "image_type": "query_temp", "product_code": "bracket-a"},
        format="json",
    )


def line_upload(name: str) -> str:
    """An object a line PC put into storage itself, ready to be registered."""
    return default_storage.save(f"line-uploads/{name}", SimpleUploadedFile(name, image_bytes(seed=31)))


def test_staff_without_permissions_reads_but_is_refused_every_write_and_index_control(role_user, product, scratch):
    image = image_create(data=image_bytes(seed=1), image_type=ImageType.DEFECT, product=product, defect_type=scratch)
    ready = IndexBuild.objects.create(image_type="defect", model_name="m", pretrained="p", status="ready")
    api = token_client(role_user(None, is_staff=True))
    key = line_upload("frame-1.jpg")
    refused = {
        "create product": api.post("/api/products/", {"product_code": "x", "product_name": "x"}, format="json"),
        "change product": api.patch(f"/api/products/{product.pk}/", {"product_name": "y"}, format="json"),
        "delete product": api.delete(f"/api/products/{product.pk}/"),
        "create defect type": api.post(
            "/api/defect-types/", {"defect_code": "d", "defect_name_ko": "d", "defect_name_en": "d"}, format="json"
        ),
        "change defect type": api.patch(f"/api/defect-types/{scratch.pk}/", {"defect_name_en": "z"}, format="json"),
        "delete defect type": api.delete(f"/api/defect-types/{scratch.pk}/"),
        "upload image": upload(api, image_type="normal", product_code="bracket-a"),
        "delete image": api.delete(f"/api/images/{image.pk}/"),
        "rebuild": api.post("/api/index/rebuild/", {"index_type": "all"}, format="json"),
        "list builds": api.get("/api/index/builds/"),
        "build detail": api.get(f"/api/index/builds/{ready.pk}/"),
        "activate": api.post(f"/api/index/builds/{ready.pk}/activate/"),
        "register query image": register(api, key),
    }
    assert {name: r.status_code for name, r in refused.items()} == {name: 403 for name in refused}
    assert all(r.json()["detail"] for r in refused.values())
    # Nothing changed.
    assert list(Product.objects.values_list("product_code", "product_name")) == [("bracket-a", "브래킷 A")]
    assert list(DefectType.objects.values_list("defect_code", "defect_name_en")) == [("scratch", "Scratch")]
    assert list(Image.objects.values_list("pk", flat=True)) == [image.pk]
    assert list(IndexBuild.objects.values_list("pk", "is_active")) == [(ready.pk, False)]
    # Reads stay open to any signed-in user.
    reads = ["/api/products/", "/api/defect-types/", "/api/images/", f"/api/images/{image.pk}/", "/api/index/status/"]
    for path in reads:
        assert api.get(path).status_code == 200, path


def test_catalog_editor_edits_the_catalog_but_controls_no_index(role_user, product, scratch):
    api = token_client(role_user(CATALOG_EDITOR))
    made = api.post("/api/products/", {"product_code": "gear-b", "product_name": "기어 B"}, format="json")
    assert made.status_code == 201, made.content
    renamed = api.patch(f"/api/products/{made.json()['id']}/", {"product_name": "Gear B"}, format="json")
    assert renamed.status_code == 200
    dent = {"defect_code": "dent", "defect_name_ko": "찍힘", "defect_name_en": "Dent"}
    assert api.post("/api/defect-types/", dent, format="json").status_code == 201
    uploaded = upload(api, image_type="defect", product_code="gear-b", defect_code="dent")
    assert uploaded.status_code == 201, uploaded.content
    assert api.delete(f"/api/images/{uploaded.json()['id']}/").status_code == 204
    assert api.post("/api/index/rebuild/", {"index_type": "all"}, format="json").status_code == 403
    assert api.get("/api/index/builds/").status_code == 403
    assert register(api, line_upload("frame-2.jpg")).status_code == 403
    assert not IndexBuild.objects.exists() and not Image.objects.exists()


def test_index_operator_rebuilds_and_activates_but_edits_no_catalog(role_user, product, scratch):
    add_images(product, scratch, 2)
    first = build_now()
    add_images(product, scratch, 1, start=5)
    second = build_now()
    api = token_client(role_user(INDEX_OPERATOR))
    assert [b["id"] for b in api.get("/api/index/builds/").json()["results"]] == [second.pk, first.pk]
    assert api.get(f"/api/index/builds/{first.pk}/").json()["artifact_prefix"] == first.artifact_prefix
    rolled_back = api.post(f"/api/index/builds/{first.pk}/activate/")
    assert rolled_back.status_code == 200 and rolled_back.json()["is_active"]
    assert api.post("/api/index/rebuild/", {"index_type": "defect"}, format="json").status_code == 202
    assert IndexBuild.objects.filter(status="queued").count() == 1
    images = Image.objects.count()
    assert api.post("/api/products/", {"product_code": "x", "product_name": "x"}, format="json").status_code == 403
    assert upload(api, image_type="normal", product_code="bracket-a").status_code == 403
    assert api.delete(f"/api/images/{Image.objects.first().pk}/").status_code == 403
    assert register(api, line_upload("frame-3.jpg")).status_code == 403
    assert Image.objects.count() == images and Product.objects.count() == 1


def test_line_pc_registers_query_images_and_nothing_else(role_user, product):
    api = token_client(role_user(LINE_PC))
    registered = register(api, line_upload("frame-4.jpg"))
    assert registered.status_code == 201, registered.content
    own = registered.json()["image_id"]
    assert api.get(f"/api/images/{own}/").status_code == 200
    assert api.delete(f"/api/images/{own}/").status_code == 403  # not even its own
    assert api.post("/api/products/", {"product_code": "x", "product_name": "x"}, format="json").status_code == 403
    assert api.post("/api/index/rebuild/", {"index_type": "all"}, format="json").status_code == 403
    assert Image.objects.filter(pk=own).exists() and not IndexBuild.objects.exists()


def test_admin_rebuild_activate_and_progress_need_the_index_permissions(client, role_user, product, scratch):
    add_images(product, scratch, 2)
    first = build_now()
    add_images(product, scratch, 1, start=5)
    second = build_now()
    progress = reverse("admin:indexing_indexbuild_progress")
    changelist = reverse("admin:indexing_indexbuild_changelist")
    activate = {"action": "activate_builds", "_selected_action": [first.pk]}

    client.force_login(role_user(None, is_staff=True))
    assert client.get(progress).status_code == 403
    assert client.post(reverse("admin:indexing_indexbuild_rebuild"), {"index_type": "all"}).status_code == 403

    editor = role_user(CATALOG_EDITOR, is_staff=True)
    client.force_login(editor)
    assert client.get(progress).status_code == 403
    assert client.post(reverse("admin:indexing_indexbuild_rebuild"), {"index_type": "all"}).status_code == 403
    images_page = client.get(reverse("admin:catalog_image_changelist")).content.decode()
    assert "rebuild_defect_index" not in images_page  # the images page offers no rebuild action
    rebuild_action = {"action": "rebuild_all_index", "_selected_action": [Image.objects.first().pk]}
    client.post(reverse("admin:catalog_image_changelist"), rebuild_action)
    assert IndexBuild.objects.count() == 2

    client.force_login(role_user(INDEX_OPERATOR, is_staff=True))
    assert client.get(progress).status_code == 200
    page = client.get(changelist).content.decode()
    assert 'id="rebuild-all"' in page and "activate_builds" in page
    assert client.post(changelist, activate).status_code == 302
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.is_active and not second.is_active
    assert client.post(reverse("admin:indexing_indexbuild_rebuild"), {"index_type": "normal"}).status_code == 302
    assert IndexBuild.objects.filter(image_type="normal", status="queued").count() == 1

    # Viewing builds without the activate permission: the action is neither offered nor run.
    viewer = role_user(None, is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_indexbuild"))
    client.force_login(viewer)
    assert "activate_builds" not in client.get(changelist).content.decode()
    client.post(changelist, {"action": "activate_builds", "_selected_action": [second.pk]})
    second.refresh_from_db()
    assert not second.is_active


def test_create_roles_is_idempotent_and_says_what_it_did(db):
    out = StringIO()
    call_command("create_roles", stdout=out)
    first = out.getvalue()
    assert first.count(": created;") == 3, first
    for role, names in ROLES.items():
        group = Group.objects.get(name=role)
        have = {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.select_related("content_type")}
        assert have == set(names), role
    assert set(ROLES[LINE_PC]) == {"catalog.register_query_image"}
    assert set(ROLES[INDEX_OPERATOR]) == {
        "indexing.view_indexbuild",
        "indexing.rebuild_index",
        "indexing.activate_indexbuild",
    }
    assert len(ROLES[CATALOG_EDITOR]) == 12

    operator = Group.objects.get(name=INDEX_OPERATOR)
    operator.permissions.add(Permission.objects.get(codename="view_image"))  # given by hand
    again = StringIO()
    call_command("create_roles", stdout=again)
    assert again.getvalue().count(": exists; permissions added: nothing") == 3, again.getvalue()
    assert "catalog.view_image" in again.getvalue()
    assert Group.objects.count() == 3 and operator.permissions.count() == 4


def test_create_roles_fails_clearly_without_the_permissions(db):
    Permission.objects.filter(codename="rebuild_index").delete()
    with pytest.raises(CommandError, match="migrate"):
        call_command("create_roles", stdout=StringIO())
