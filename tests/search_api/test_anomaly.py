"""Anomaly check against the normal images of a product (issue 10): models built with the normal
index, POST /api/anomaly/detect/, results in storage with an expiry, errors, history."""

from __future__ import annotations

import io
from datetime import timedelta

import numpy as np
import pytest
import requests
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from PIL import Image as PILImage

from catalog.models import DefectType, ImageType, Product
from catalog.services import image_create
from indexing.anomaly import FIT_REVISION
from indexing.models import ProductAnomalyModel
from indexing.services import index_build_activate
from search_api.index_cache import index_cache
from search_api.models import SearchLog
from search_api.services import anomaly_results_purge
from tests.helpers import surface_photo
from tests.indexing.conftest import build_now

pytestmark = pytest.mark.django_db

DETECT = "/api/anomaly/detect/"


@pytest.fixture
def anomaly_catalog(product):  # type: ignore[no-untyped-def]
    """bracket-a: 6 normal surfaces and 3 with a dark disc; gear-b: only 3 normal images."""
    dent = DefectType.objects.create(defect_code="dent", defect_name_ko="찍힘", defect_name_en="Dent")
    gear = Product.objects.create(product_code="gear-b", product_name="기어 B")
    normals = [
        image_create(data=surface_photo(seed), image_type=ImageType.NORMAL, product=product) for seed in range(6)
    ]
    for seed in range(3):
        image_create(
            data=surface_photo(100 + seed, defect=True), image_type=ImageType.DEFECT, product=product, defect_type=dent
        )
    for seed in range(3):
        image_create(data=surface_photo(200 + seed), image_type=ImageType.NORMAL, product=gear)
    build = build_now("normal")
    assert build.status == "ready", build.error
    return build, normals


def test_defect_images_that_no_longer_read_or_decode_are_left_out_of_the_catalog_figure(product):
    """The build's AUROC reads and scores the defect images in batches; one file deleted and one
    overwritten with junk since upload leave the figure to the third, and the build succeeds."""
    from django.core.files.base import ContentFile

    dent = DefectType.objects.create(defect_code="dent", defect_name_ko="찍힘", defect_name_en="Dent")
    for seed in range(6):
        image_create(data=surface_photo(seed), image_type=ImageType.NORMAL, product=product)
    defects = [
        image_create(
            data=surface_photo(100 + seed, defect=True), image_type=ImageType.DEFECT, product=product, defect_type=dent
        )
        for seed in range(3)
    ]
    default_storage.delete(defects[0].file.name)
    default_storage.delete(defects[1].file.name)
    assert default_storage.save(defects[1].file.name, ContentFile(b"not an image any more")) == defects[1].file.name
    build = build_now("normal")
    assert build.status == "ready", build.error
    (row,) = ProductAnomalyModel.objects.filter(build=build)
    assert row.defect_count == 3 and row.image_auroc == 1.0  # the remaining dark disc against six normals


def _bracket_with_defects(product):  # type: ignore[no-untyped-def]
    dent = DefectType.objects.create(defect_code="dent", defect_name_ko="찍힘", defect_name_en="Dent")
    for seed in range(6):
        image_create(data=surface_photo(seed), image_type=ImageType.NORMAL, product=product)
    return [
        image_create(
            data=surface_photo(100 + seed, defect=True), image_type=ImageType.DEFECT, product=product, defect_type=dent
        )
        for seed in range(3)
    ]


def test_the_catalog_auroc_is_measured_once_the_build_serves(product, monkeypatch):
    """Scoring the defect photos costs about as much as fitting the models: the build goes live
    first, then the figure is written on its record, timed apart from the build."""
    from indexing import services
    from indexing.models import IndexBuild

    _bracket_with_defects(product)
    seen = []
    measure = services._anomaly_auroc

    def observed(model, defect_files):  # type: ignore[no-untyped-def]
        build = IndexBuild.objects.get(image_type="normal")
        seen.append((build.status, build.is_active, ProductAnomalyModel.objects.get(build=build).image_auroc))
        return measure(model, defect_files)

    monkeypatch.setattr(services, "_anomaly_auroc", observed)
    build = build_now("normal")
    assert seen == [("ready", True, None)]
    (row,) = ProductAnomalyModel.objects.filter(build=build)
    assert row.image_auroc == 1.0 and row.eval_set_sha256
    assert build.timings["anomaly_eval_s"] > 0


def test_a_failed_auroc_measurement_leaves_the_build_serving_and_the_next_build_measures_it(
    product, monkeypatch, admin_client
):
    from django.urls import reverse

    from indexing import services

    _bracket_with_defects(product)

    def broken(model, defect_files):  # type: ignore[no-untyped-def]
        raise OSError("storage went away")

    monkeypatch.setattr(services, "_anomaly_auroc", broken)
    first = build_now("normal")
    assert first.status == "ready" and first.is_active
    row = ProductAnomalyModel.objects.get(build=first)
    assert row.image_auroc is None and row.eval_set_sha256 == "" and row.defect_count == 3
    page = admin_client.get(reverse("admin:catalog_product_change", args=[product.pk])).content.decode()
    assert "measured just after the build goes live" in page

    monkeypatch.undo()
    second = build_now("normal")
    again = ProductAnomalyModel.objects.get(build=second)
    assert again.reused_from_id == first.pk and again.image_auroc == 1.0
    page = admin_client.get(reverse("admin:catalog_product_change", args=[product.pk])).content.decode()
    assert "image AUROC 1.000 on 3 defect images" in page


def test_a_storage_error_while_measuring_is_not_kept_as_the_figure(product, monkeypatch):
    """A defect photo that is gone is left out of the figure; one that storage fails to serve
    (down, a timeout) leaves the figure to be measured again, instead of one from the others."""
    from indexing import services

    defects = _bracket_with_defects(product)
    unreachable = defects[0].file.name
    read = services.read_object

    def flaky(name, **kwargs):  # type: ignore[no-untyped-def]
        if name == unreachable:
            raise ConnectionError("storage did not answer")
        return read(name, **kwargs)

    monkeypatch.setattr(services, "read_object", flaky)
    first = build_now("normal")
    assert first.status == "ready" and first.is_active
    row = ProductAnomalyModel.objects.get(build=first)
    assert row.image_auroc is None and row.eval_set_sha256 == ""
    monkeypatch.undo()
    again = ProductAnomalyModel.objects.get(build=build_now("normal"))
    assert again.reused_from_id == first.pk and again.image_auroc == 1.0 and again.eval_set_sha256


def detect(client, **fields):  # type: ignore[no-untyped-def]
    if "image" in fields:
        fields["image"] = SimpleUploadedFile("photo.png", fields["image"])
        return client.post(DETECT, fields, format="multipart")
    return client.post(DETECT, fields, format="json")


def fetch(client, url: str) -> bytes:  # type: ignore[no-untyped-def]
    """A result link: this server's /media/ (local storage) or a presigned S3 URL."""
    if not url.startswith("http://testserver/"):
        response = requests.get(url, timeout=10)
        assert response.status_code == 200, url
        return response.content
    response = client.get(url.removeprefix("http://testserver"))
    assert response.status_code == 200, url
    return b"".join(response.streaming_content) if response.streaming else response.content


def test_the_normal_build_makes_a_model_per_product_with_enough_normal_images(anomaly_catalog):
    build, _ = anomaly_catalog
    (row,) = ProductAnomalyModel.objects.filter(build=build)
    assert row.product.product_code == "bracket-a" and row.normal_count == 6 and row.defect_count == 3
    assert row.threshold > 0 and row.bank_size > 0 and row.reused_from is None
    # Three dark discs against six plain surfaces: the catalog's own figure is perfect here.
    assert row.image_auroc == 1.0
    index_cache.reset()
    manifest = index_cache.get(engine="v2", image_type="normal").manifest
    assert set(manifest["anomaly_models"]) == {"bracket-a"}
    assert manifest["files"][row.file_name]["sha256"] == row.sha256
    assert "anomaly_s" in manifest["timings"]


def test_a_defect_is_anomalous_a_new_normal_is_not_and_the_maps_are_in_storage(
    any_storage, anomaly_catalog, plain_api, client
):
    build, normals = anomaly_catalog
    defect = detect(plain_api, image=surface_photo(500, defect=True), product_code="bracket-a")
    assert defect.status_code == 200, defect.content
    body = defect.json()
    assert body["is_anomalous"] is True and body["anomaly_score"] > body["threshold"] == body["calibrated_threshold"]
    assert body["index"]["build_id"] == build.pk and body["anomaly_features"]["is_untrained"] is True
    assert body["nearest_normal"]["image_id"] in {n.pk for n in normals} and "warning" in body
    normal = detect(plain_api, image=surface_photo(501), product_code="bracket-a").json()
    assert normal["anomaly_score"] < body["anomaly_score"]

    heatmap = PILImage.open(io.BytesIO(fetch(client, body["heatmap_url"])))
    overlay = PILImage.open(io.BytesIO(fetch(client, body["overlay_url"])))
    raw = PILImage.open(io.BytesIO(fetch(client, body["anomaly_map_url"])))
    assert heatmap.size == overlay.size == raw.size == (160, 128) and raw.mode == "I;16"
    # The whole disc (centre 104, 60 of a 160 x 128 photo) is above the threshold (half scale),
    # and far brighter than the left edge of the part.
    pixels = np.asarray(raw, dtype=np.float64)
    yy, xx = np.mgrid[0:128, 0:160]
    disc = np.hypot(xx - 104, yy - 60) < 12.8
    threshold_level = body["threshold"] / body["anomaly_map_scale"] * 65535
    assert pixels[disc].min() > threshold_level and pixels[:, :40].mean() < pixels[disc].mean() / 2
    # Unsaturated, the raw map gives back the distances: its peak is the photo's score.
    normal_map = np.asarray(PILImage.open(io.BytesIO(fetch(client, normal["anomaly_map_url"]))), dtype=np.float64)
    assert normal_map.max() / 65535 * normal["anomaly_map_scale"] == pytest.approx(normal["anomaly_score"], rel=0.05)
    assert normal["is_anomalous"] is False
    expires = timezone.datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert abs((expires - timezone.now()) - timedelta(hours=24)) < timedelta(minutes=1)
    log = SearchLog.objects.filter(query_kind="anomaly").first()
    assert log.filters["product_code"] == "bracket-a" and log.build_id == build.pk and log.filters["input"] == "upload"


def test_a_catalog_image_gives_its_product_and_the_override_decides_the_verdict(anomaly_catalog, plain_api, product):
    _, normals = anomaly_catalog
    checked = detect(plain_api, image_id=normals[0].pk)
    assert checked.status_code == 200 and checked.json()["product_code"] == "bracket-a"
    assert checked.json()["is_anomalous"] is False  # a training normal is at or below the threshold
    product.anomaly_threshold = 0.0
    product.save()
    overridden = detect(plain_api, image_id=normals[0].pk).json()
    assert overridden["threshold"] == 0.0 and overridden["is_anomalous"] is True


def result_folders() -> list[str]:
    """The result folders that hold files (an object store may list emptied ones)."""
    try:
        folders = default_storage.listdir("anomaly-results")[0]
    except FileNotFoundError:
        return []
    return [folder for folder in folders if default_storage.listdir(f"anomaly-results/{folder}")[1]]


def test_errors_are_clear_and_write_nothing(anomaly_catalog, plain_api):
    photo = surface_photo(7)
    few = detect(plain_api, image=photo, product_code="gear-b")
    assert few.status_code == 409 and few.json()["code"] == "no_anomaly_model"
    assert "holds 3" in few.json()["detail"] and "needs 5" in few.json()["detail"]
    assert detect(plain_api, image=photo).status_code == 400  # which product?
    assert detect(plain_api, image=photo, product_code="nope").status_code == 400
    assert detect(plain_api, product_code="bracket-a").status_code == 400  # no photo
    assert detect(plain_api, image=b"not an image", product_code="bracket-a").status_code == 400
    assert detect(plain_api, image_id=999999, product_code="bracket-a").status_code == 404
    assert result_folders() == [] and not SearchLog.objects.exists()


def test_no_normal_build_is_503_saying_to_rebuild(plain_api, product):
    response = detect(plain_api, image=surface_photo(1), product_code="bracket-a")
    assert response.status_code == 503 and "rebuild" in response.json()["detail"].lower()


def test_expired_results_are_purged_and_fresh_ones_kept(any_storage, anomaly_catalog, plain_api):
    detect(plain_api, image=surface_photo(9), product_code="bracket-a")
    (folder,) = result_folders()
    assert anomaly_results_purge() == 0 and result_folders() == [folder]
    assert anomaly_results_purge(now=timezone.now() + timedelta(hours=25)) == 1 and result_folders() == []
    assert anomaly_results_purge(now=timezone.now() + timedelta(hours=25)) == 0


def test_an_unchanged_product_reuses_its_model_and_a_changed_one_is_fitted_again(anomaly_catalog, product, monkeypatch):
    first, _ = anomaly_catalog
    old = ProductAnomalyModel.objects.get(build=first)
    second = build_now("normal")
    again = ProductAnomalyModel.objects.get(build=second)
    assert again.reused_from_id == first.pk and again.sha256 == old.sha256 and again.image_auroc == old.image_auroc
    assert "anomaly_eval_s" not in second.timings  # the same defect pictures: the figure is carried over
    image_create(data=surface_photo(42), image_type=ImageType.NORMAL, product=product)
    third = build_now("normal")
    changed = ProductAnomalyModel.objects.get(build=third)
    assert changed.reused_from_id is None and changed.normal_count == 7 and changed.sha256 != old.sha256
    # A new way of fitting (anomaly.FIT_REVISION) fits the unchanged product again, once.
    monkeypatch.setattr("indexing.services.FIT_REVISION", FIT_REVISION + 1)
    refitted = ProductAnomalyModel.objects.get(build=build_now("normal"))
    assert refitted.reused_from_id is None and refitted.normal_set_sha256 != changed.normal_set_sha256
    assert ProductAnomalyModel.objects.get(build=build_now("normal")).reused_from_id == refitted.build_id


def test_unauthenticated_is_refused(client, anomaly_catalog):
    assert client.post(DETECT, {"product_code": "bracket-a"}).status_code in (401, 403)


def test_the_admin_shows_each_model_and_takes_a_threshold_override(anomaly_catalog, client, staff_user, product):
    build, _ = anomaly_catalog
    row = ProductAnomalyModel.objects.get(build=build)
    client.force_login(staff_user)
    page = client.get(f"/admin/catalog/product/{product.pk}/change/").content.decode()
    assert f"Calibrated threshold {row.threshold:.4f} from 6 normal images (build {build.pk})" in page
    assert "image AUROC 1.000 on 3 defect images" in page
    gear = Product.objects.get(product_code="gear-b")
    assert "a product needs 5 normal images" in client.get(f"/admin/catalog/product/{gear.pk}/change/").content.decode()
    saved = client.post(
        f"/admin/catalog/product/{product.pk}/change/",
        {"product_code": "bracket-a", "product_name": "브래킷 A", "description": "", "anomaly_threshold": "1.5"},
    )
    assert saved.status_code == 302
    product.refresh_from_db()
    assert product.anomaly_threshold == 1.5
    build_page = client.get(f"/admin/indexing/indexbuild/{build.pk}/change/").content.decode()
    assert "bracket-a" in build_page and "Image AUROC" in build_page


def test_the_console_anomaly_mode_shows_the_verdict_the_overlay_and_the_nearest_normal(
    anomaly_catalog, client, staff_user, product
):
    client.force_login(staff_user)
    page = client.post(
        "/admin/search/",
        {
            "mode": "anomaly",
            "photo": SimpleUploadedFile("line.png", surface_photo(600, defect=True)),
            "product": product.pk,
            "image_type": "defect",
            "top_k": 5,
        },
    ).content.decode()
    assert 'data-anomalous="true"' in page and "Anomalous" in page and "overlay.png" in page
    assert 'class="nearest-normal" data-image-id="' in page
    assert SearchLog.objects.get().source == "console"
    # Without a product (and no catalog image to take it from) the form says what is missing.
    missing = client.post(
        "/admin/search/",
        {
            "mode": "anomaly",
            "photo": SimpleUploadedFile("line.png", surface_photo(601)),
            "image_type": "defect",
            "top_k": 5,
        },
    ).content.decode()
    assert "Choose the product of the part in the photo." in missing and "data-anomalous" not in missing
    text = client.post(
        "/admin/search/", {"mode": "anomaly", "text": "dent", "product": product.pk, "image_type": "defect", "top_k": 5}
    ).content.decode()
    assert "needs exactly one photo or catalog image id" in text


def test_rolling_back_the_normal_build_rolls_back_its_anomaly_models(anomaly_catalog, plain_api, product):
    first, _ = anomaly_catalog
    image_create(data=surface_photo(43), image_type=ImageType.NORMAL, product=product)
    second = build_now("normal")
    newer = ProductAnomalyModel.objects.get(build=second)
    photo = surface_photo(700, defect=True)
    assert detect(plain_api, image=photo, product_code="bracket-a").json()["index"]["build_id"] == second.pk
    index_build_activate(build=first)
    index_cache.reset()
    older = detect(plain_api, image=photo, product_code="bracket-a").json()
    assert older["index"]["build_id"] == first.pk
    assert older["calibrated_threshold"] == ProductAnomalyModel.objects.get(build=first).threshold
    assert newer.threshold != older["calibrated_threshold"]


def test_results_that_cannot_be_written_are_a_503_and_leave_nothing(anomaly_catalog, plain_api, settings):
    # A file where the results folder should be: the local storage cannot create it (a real
    # failure of the write, no fake storage).
    blocker = default_storage.path("anomaly-results")
    with open(blocker, "wb") as handle:
        handle.write(b"in the way")
    response = detect(plain_api, image=surface_photo(800, defect=True), product_code="bracket-a")
    assert response.status_code == 503 and response.json()["code"] == "storage_unavailable"
    assert not SearchLog.objects.exists()


def test_a_weights_file_with_another_sha256_is_refused(settings, tmp_path, anomaly_catalog, plain_api):
    import hashlib

    import torch
    import torchvision

    checkpoint = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), checkpoint)
    settings.SIMSEARCH_ANOMALY_WEIGHTS = str(checkpoint)
    settings.SIMSEARCH_ANOMALY_WEIGHTS_SHA256 = "0" * 64
    refused = detect(plain_api, image=surface_photo(900), product_code="bracket-a")
    assert refused.status_code == 503 and "SIMSEARCH_ANOMALY_WEIGHTS" in refused.json()["detail"]
    settings.SIMSEARCH_ANOMALY_WEIGHTS_SHA256 = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    # The right file loads; its features are not those the active models were built with.
    other = detect(plain_api, image=surface_photo(900), product_code="bracket-a")
    assert other.status_code == 409 and other.json()["code"] == "model_mismatch"


def test_a_model_file_gone_from_storage_is_a_503_not_a_500(anomaly_catalog, plain_api):
    build, _ = anomaly_catalog
    row = ProductAnomalyModel.objects.get(build=build)
    default_storage.delete(f"{build.artifact_prefix}/{row.file_name}")
    index_cache.reset()
    response = detect(plain_api, image=surface_photo(901), product_code="bracket-a")
    assert response.status_code == 503 and response.json()["code"] == "model_unavailable"
    assert "rebuild the normal index" in response.json()["detail"]
