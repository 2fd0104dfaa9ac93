"""Catalog adaptation in builds (issue 11): opt-in per rebuild (API, admin, command, setting), a
projection learnt from the catalog's labels that the build keeps only when it helps on held-out
pictures, applied to every query against that build, never to the cached embeddings."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from django.core.management import call_command
from PIL import Image as PILImage

from catalog.models import DefectType, ImageType, Product
from catalog.services import image_create
from indexing.adaptation import PROJECTION_FILE
from indexing.models import CachedEmbedding, IndexBuild
from indexing.services import index_build_run
from search_api.index_cache import index_cache
from tests.indexing.conftest import build_now

pytestmark = pytest.mark.django_db

REBUILD = "/api/index/rebuild/"
SEARCH = "/api/search/similarity/"


def part(seed: int, product: int, defect: int) -> bytes:
    """A part photo: the product decides the layout (strong), the defect type a small tinted
    patch (weak), as a whole-photo embedding of a small defect sees it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64]
    base = 128 + 60 * np.sin((xx if product == 0 else yy) / (3 + 2 * product)) + rng.normal(0, 12, (64, 64))
    pixels = np.repeat(base[..., None], 3, axis=2)
    x, y = rng.integers(4, 44, 2)
    pixels[y : y + 12, x : x + 12, defect] += 90
    buffer = io.BytesIO()
    PILImage.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def labelled_catalog(db):  # type: ignore[no-untyped-def]
    """2 products x 3 defect types (red, green, blue patches), 36 photos each."""
    products = [Product.objects.create(product_code=f"p{i}", product_name=f"P{i}") for i in range(2)]
    defects = [
        DefectType.objects.create(defect_code=code, defect_name_ko=code, defect_name_en=code)
        for code in ("red", "green", "blue")
    ]
    images = []
    for p, product in enumerate(products):
        for d, defect in enumerate(defects):
            for i in range(36):
                images.append(
                    image_create(
                        data=part(1000 * p + 100 * d + i, p, d),
                        image_type=ImageType.DEFECT,
                        product=product,
                        defect_type=defect,
                    )
                )
    return images


def test_a_build_asked_to_adapt_keeps_a_projection_that_helps_and_queries_go_through_it(
    labelled_catalog, plain_api, tmp_path
):
    plain = build_now("defect")
    assert plain.adapt is False and (plain.quality or {}).get("adaptation") == {"requested": False}
    build = build_now("defect", adapt=True)
    assert build.status == "ready", build.error
    index_cache.reset()
    loaded = index_cache.get(engine="v2", image_type="defect")
    adaptation = loaded.manifest["adaptation"]
    assert adaptation["requested"] and adaptation["kept"], adaptation
    assert adaptation["adapted_top1"] > adaptation["base_top1"]
    assert loaded.projection is not None and PROJECTION_FILE in loaded.manifest["files"]
    assert loaded.index.d == loaded.projection.output_dim > 64
    # The quality panel's figures: measured on the adapted vectors, with the plain ones beside.
    build.refresh_from_db()
    assert build.quality["adaptation"]["kept"] and build.quality["base"]["main_label"] == "defect_type"
    served = build.quality["labels"]["defect_type"]["top1_accuracy"]["value"]
    base = build.quality["base"]["labels"]["defect_type"]["top1_accuracy"]["value"]
    assert served > base
    # The cached embeddings stay the plain ones: the next plain build serves them unchanged.
    assert all(len(row.vector) == 4 * 64 for row in CachedEmbedding.objects.all()[:3])

    # An exact copy of a catalog photo finds itself first, through the projection.
    copy = labelled_catalog[30]
    response = plain_api.post(SEARCH, {"image_id": copy.pk, "top_k": 3, "focus": "whole"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["results"][0]["image_id"] == copy.pk
    assert response.json()["results"][0]["similarity_score"] == pytest.approx(1.0, abs=1e-4)
    # Text queries keep working against an adapted build.
    text = plain_api.post(SEARCH, {"text": "a red mark", "top_k": 3}, format="json")
    assert text.status_code == 200 and len(text.json()["results"]) == 3
    # A plant's held-out folder is evaluated in the adapted space too.
    for i, (p, d, code) in enumerate([(0, 0, "red"), (1, 1, "green"), (0, 2, "blue")]):
        (tmp_path / f"p{p}_{code}_{i}.png").write_bytes(part(9000 + i, p, d))
    out = io.StringIO()
    call_command("evaluate_index", "--queries", str(tmp_path), "--json", stdout=out)
    assert json.loads(out.getvalue())["quality"]["labels"]["defect_type"]["queries"] == 3


def test_a_projection_that_does_not_help_is_not_kept_and_the_build_says_why(product, scratch, plain_api):
    for seed in range(8):
        image_create(data=part(seed, 0, 0), image_type=ImageType.DEFECT, product=product, defect_type=scratch)
    build = build_now("defect", adapt=True)
    assert build.status == "ready"
    index_cache.reset()
    loaded = index_cache.get(engine="v2", image_type="defect")
    assert loaded.manifest["adaptation"]["requested"] and not loaded.manifest["adaptation"]["kept"]
    assert "at least 2 labels" in loaded.manifest["adaptation"]["reason"]
    assert loaded.projection is None and PROJECTION_FILE not in loaded.manifest["files"]


def test_adaptation_is_asked_by_the_api_the_admin_button_the_command_and_the_setting(
    labelled_catalog, staff_api, client, staff_user, settings, django_capture_on_commit_callbacks
):
    for body in ({"index_type": "defect", "adapt": "yes"}, {"index_type": "defect", "adapt": 1}):
        assert staff_api.post(REBUILD, body, format="json").status_code == 400
    response = staff_api.post(REBUILD, {"index_type": "defect", "adapt": True}, format="json")
    assert response.status_code == 202 and IndexBuild.objects.get().adapt is True
    IndexBuild.objects.all().delete()
    form = staff_api.post(REBUILD, {"index_type": "defect", "adapt": "true"})  # a form's true
    assert form.status_code == 202 and IndexBuild.objects.get().adapt is True
    IndexBuild.objects.all().delete()
    for word in ("0", "on", "yes"):  # a form's boolean is the word true or false, as the schema says
        assert staff_api.post(REBUILD, {"index_type": "defect", "adapt": word}).status_code == 400
    assert staff_api.post(REBUILD, {"index_type": "defect", "adapt": ""}, format="json").status_code == 400

    client.force_login(staff_user)
    client.post("/admin/indexing/indexbuild/rebuild/", {"index_type": "defect", "adapt": "on"})
    assert IndexBuild.objects.get().adapt is True
    IndexBuild.objects.all().delete()
    client.post("/admin/indexing/indexbuild/rebuild/", {"index_type": "defect"})
    assert IndexBuild.objects.get().adapt is False
    IndexBuild.objects.all().delete()
    page = client.get("/admin/indexing/indexbuild/")
    assert b'id="rebuild-adapt-form"' in page.content

    settings.SIMSEARCH_ADAPT = "on"
    assert staff_api.post(REBUILD, {"index_type": "defect"}, format="json").status_code == 202
    (build,) = IndexBuild.objects.all()
    assert build.adapt is True
    index_build_run(build_id=build.pk)
    build.refresh_from_db()
    # A multipart body whose only part has no field name is refused, not read as "all defaults".
    garbage = b"--B\r\n\xaa\xbcZ\xdd--B--\r\n"
    activate = f"/api/index/builds/{build.pk}/activate/"
    refused = staff_api.generic("POST", activate, garbage, content_type="multipart/form-data; boundary=B")
    assert refused.status_code == 400, refused.content
    assert staff_api.post(activate).status_code == 200  # an empty form: confirm defaults to false
    assert staff_api.post(activate, {"confirm": "true"}).status_code == 200
    page = client.get(f"/admin/indexing/indexbuild/{build.pk}/change/")
    html = page.content.decode()
    assert 'class="quality-adaptation" data-kept="true"' in html and "quality-variants" in html
    settings.SIMSEARCH_ADAPT = "off"
    out = io.StringIO()
    call_command("rebuild_index", "--type", "defect", "--sync", "--adapt", stdout=out)
    assert IndexBuild.objects.latest("pk").adapt is True and "Catalog adaptation: kept" in out.getvalue()
    call_command("rebuild_index", "--type", "defect", "--sync", stdout=io.StringIO())
    assert IndexBuild.objects.latest("pk").adapt is False
