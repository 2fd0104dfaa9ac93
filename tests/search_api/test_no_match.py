"""Calibrated "no match" through a real build and the HTTP API: every result carries a
match_confidence, and the answer says no_confident_match when no result clears its defect type's
threshold (indexing/calibration.py).

The tiny untrained model scores most pictures alike, but it tells flat colours apart: each defect
type here is one colour (a scratch is red, a dent blue, a stain a chequer), photographed with
sensor noise, so a catalog type finds its own kind and a green part, a kind the catalog lacks,
finds nothing close."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image as PILImage
from PIL import ImageDraw

from catalog.models import DefectType, ImageType, Product
from catalog.services import image_create
from indexing.artifacts import pack_artifacts, unpack_artifacts
from indexing.calibration import MODE_DEFECT_REGION, MODE_WHOLE, calibrate
from search_api.index_cache import index_cache
from search_api.search import match_check
from tests.helpers import surface_photo
from tests.indexing.conftest import build_now

pytestmark = pytest.mark.django_db

SEARCH = "/api/search/similarity/"
CONSOLE = "/admin/search/"
KINDS = {"scratch": "red", "dent": "blue", "stain": "chequer"}


def part_photo(kind: str, seed: int) -> bytes:
    """A 72 px PNG of one flat kind of surface with sensor noise; seeds differ in the noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:72, 0:72]
    colours = {"red": (200, 40, 40), "blue": (40, 40, 200), "green": (40, 200, 40)}
    if kind == "chequer":
        pixels = np.repeat(((xx // 9 + yy // 9) % 2 * 200 + 30)[..., None], 3, axis=2).astype(float)
    else:
        pixels = np.zeros((72, 72, 3)) + colours[kind]
    pixels += rng.normal(0, 12, pixels.shape)
    buffer = io.BytesIO()
    PILImage.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def colour_catalog(product) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    """Two products x three defect types x five photos, and the defect index built from them.
    Returns one catalog photo's bytes per defect type."""
    gear = Product.objects.create(product_code="gear-b", product_name="기어 B")
    first: dict[str, bytes] = {}
    seed = 0
    for code, kind in KINDS.items():
        defect = DefectType.objects.create(defect_code=code, defect_name_ko=code, defect_name_en=code.title())
        for owner in (product, gear):
            for _ in range(5):
                seed += 1
                data = part_photo(kind, seed)
                image_create(data=data, image_type=ImageType.DEFECT, product=owner, defect_type=defect)
                first.setdefault(code, data)
    assert build_now("defect").status == "ready"
    return first


def search(client, photo: bytes, **fields):  # type: ignore[no-untyped-def]
    response = client.post(SEARCH, {"image": SimpleUploadedFile("q.png", photo), **fields}, format="multipart")
    assert response.status_code == 200, response.content
    return response.json()


def test_an_exact_copy_of_a_catalog_photo_is_a_confident_match(plain_api, colour_catalog):
    body = search(plain_api, colour_catalog["dent"], top_k=3)
    top = body["results"][0]
    assert top["similarity_score"] == pytest.approx(1.0, abs=1e-4) and top["defect_code"] == "dent"
    assert top["match_confidence"] >= 0.9 and top["confident_match"] is True
    assert body["no_confident_match"] is False


def test_a_new_photo_of_a_known_kind_clears_its_threshold(plain_api, colour_catalog):
    body = search(plain_api, part_photo("red", seed=999), top_k=3)
    assert body["results"][0]["defect_code"] == "scratch" and body["results"][0]["confident_match"] is True
    assert body["no_confident_match"] is False


def test_a_kind_the_catalog_lacks_is_no_confident_match(plain_api, colour_catalog):
    body = search(plain_api, part_photo("green", seed=7), top_k=5)
    assert body["no_confident_match"] is True
    assert all(r["confident_match"] is False and r["match_confidence"] < 0.9 for r in body["results"])
    # Unknown, not merely unlike its neighbours: the best score is far below every catalog type's own.
    best = body["results"][0]["similarity_score"]
    copy = search(plain_api, colour_catalog[body["results"][0]["defect_code"]], top_k=2)["results"][1]
    assert best < copy["similarity_score"]


def test_a_legacy_index_is_calibrated_from_its_file_names(settings, tmp_path: Path, plain_api, db):
    folder = tmp_path / "legacy"
    folder.mkdir()
    for n, (code, kind) in enumerate([(code, kind) for code, kind in KINDS.items() for _ in range(10)]):
        (folder / f"bracket-a_{code}_{n}.png").write_bytes(part_photo(kind, seed=n))
    settings.INDEX_DIR_V1, settings.USE_INDEX_V2 = str(folder), False
    assert build_now("defect", engine="v1").status == "ready"
    known = search(plain_api, part_photo("blue", seed=500), top_k=2)
    assert known["version"] == "v1" and known["results"][0]["defect"] == "dent"
    assert known["results"][0]["confident_match"] is True and known["no_confident_match"] is False
    unknown = search(plain_api, part_photo("green", seed=7), top_k=2)
    assert unknown["no_confident_match"] is True and unknown["results"][0]["match_confidence"] < 0.9


def test_text_queries_are_not_calibrated(plain_api, colour_catalog):
    response = plain_api.post(SEARCH, {"text": "a red scratch", "top_k": 2}, format="json")
    body = response.json()
    assert response.status_code == 200 and body["no_confident_match"] is None
    assert [r["match_confidence"] for r in body["results"]] == [None, None]


def test_the_console_shows_match_confidence_and_a_no_match_banner(client, staff_user, colour_catalog):
    client.force_login(staff_user)

    def console(photo: bytes) -> str:
        page = client.post(CONSOLE, {"photo": SimpleUploadedFile("q.png", photo), "image_type": "defect", "top_k": 3})
        assert page.status_code == 200
        return page.content.decode()

    unknown = console(part_photo("green", seed=7))
    assert 'class="no-confident-match' in unknown and "No confident match" in unknown
    confidences = [float(c) for c in re.findall(r'data-match-confidence="([0-9.]+)"', unknown)]
    assert len(confidences) == 3 and max(confidences) < 0.9
    known = console(colour_catalog["stain"])
    assert "no-confident-match" not in known
    assert float(re.findall(r'data-match-confidence="([0-9.]+)"', known)[0]) >= 0.9
    assert "Match confidence" in known


def test_each_search_mode_is_judged_by_the_calibration_of_its_own_scores(tmp_path):
    """Whole-image and defect-focused search score in different spaces: an answer is judged by the
    calibration of the mode that answered, and by none when the build has none for it."""
    vectors = np.array([[1, 0], [0.99, 0.14], [0, 1], [0.14, 0.99]], dtype=np.float32)
    records = [
        {"image_id": i + 1, "defect_code": code, "sha256": f"h{i}"} for i, code in enumerate(["a", "a", "b", "b"])
    ]
    whole = calibrate(vectors, ["a", "a", "b", "b"], ["h0", "h1", "h2", "h3"], label_field="defect_code")
    region = calibrate(vectors, ["a", "b", "a", "b"], ["h0", "h1", "h2", "h3"], label_field="defect_code")
    assert whole is not None and region is not None

    def loaded(calibrations: dict):  # type: ignore[no-untyped-def]
        manifest = {"build_id": 1, "calibration": {mode: c.to_dict() for mode, c in calibrations.items()}}
        into = tmp_path / f"build-{len(list(tmp_path.iterdir()))}"
        return unpack_artifacts(
            pack_artifacts(ids=np.arange(1, 5), vectors=vectors, metadata=records, manifest=manifest, into=into)
        )

    both = loaded({MODE_WHOLE: whole, MODE_DEFECT_REGION: region})
    hits = [(1, 0.999), (3, 0.5)]
    for mode, calibration in ((MODE_WHOLE, whole), (MODE_DEFECT_REGION, region)):
        check = match_check(both, hits, mode=mode)
        assert check.assessments == [calibration.assess("a", 0.999), calibration.assess("b", 0.5)]
        assert check.no_confident_match is not any(a.confident for a in check.assessments)
    assert match_check(both, hits, mode=MODE_WHOLE) != match_check(both, hits, mode=MODE_DEFECT_REGION)
    only_whole = match_check(loaded({MODE_WHOLE: whole}), hits, mode=MODE_DEFECT_REGION)
    assert only_whole.assessments == [None, None] and only_whole.no_confident_match is None


def marked_surface(seed: int, kind: str) -> bytes:
    """A normal surface (tests.helpers.surface_photo) with a dark disc ("dent") or a bright square
    ("stain") somewhere on it."""
    rng = np.random.default_rng(seed)
    img = PILImage.open(io.BytesIO(surface_photo(seed))).convert("RGB")
    x, y = int(rng.integers(30, 130)), int(rng.integers(30, 98))
    draw = ImageDraw.Draw(img)
    if kind == "dent":
        draw.ellipse((x - 11, y - 11, x + 11, y + 11), fill=(35, 35, 35))
    else:
        draw.rectangle((x - 9, y - 9, x + 9, y + 9), fill=(245, 245, 245))
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


def test_a_defect_focused_answer_is_judged_by_the_defect_region_calibration(plain_api, product):
    for seed in range(6):
        image_create(data=surface_photo(seed), image_type=ImageType.NORMAL, product=product)
    for code in ("dent", "stain"):
        defect = DefectType.objects.create(defect_code=code, defect_name_ko=code, defect_name_en=code.title())
        for seed in range(5):
            image_create(
                data=marked_surface(100 + seed, code), image_type=ImageType.DEFECT, product=product, defect_type=defect
            )
    assert build_now("normal").status == "ready" and build_now("defect").status == "ready"
    loaded = index_cache.get(engine="v2", image_type="defect")
    region, whole = loaded.calibration_for(MODE_DEFECT_REGION), loaded.calibration_for(MODE_WHOLE)
    assert region is not None and whole is not None
    differs = False
    for focus, calibration in (("defect", region), ("whole", whole)):
        body = search(plain_api, marked_surface(900, "dent"), top_k=4, focus=focus)
        assert body["focus"]["mode"] == focus
        for result in body["results"]:
            expected = calibration.assess(result["defect_code"], result["similarity_score"])
            assert (result["match_confidence"], result["confident_match"]) == (expected.confidence, expected.confident)
            other = (whole if calibration is region else region).assess(
                result["defect_code"], result["similarity_score"]
            )
            differs |= other.confidence != expected.confidence
        assert body["no_confident_match"] is not any(r["confident_match"] for r in body["results"])
    assert differs  # else this test could not tell the two calibrations apart
