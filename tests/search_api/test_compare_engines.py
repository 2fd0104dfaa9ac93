"""Compare engines in the staff console: the same query answered by the V2 (catalog) and the V1
(legacy folder) index side by side, their overlap and the file-name/catalog label disagreements
(the seed's migration sign-off, issue 9)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from search_api.models import SearchLog
from tests.indexing.conftest import build_now
from tests.search_api.test_console import cards

pytestmark = pytest.mark.django_db

CONSOLE = "/admin/search/"


@pytest.fixture
def legacy_twin(settings, tmp_path: Path, indexed_gallery):  # type: ignore[no-untyped-def]
    """A legacy folder holding the same defect pictures as the catalog, one of them filed under the
    wrong defect in its name, with its V1 index built. Returns (mislabelled image, its file name)."""
    folder = tmp_path / "legacy"
    folder.mkdir()
    mislabelled = indexed_gallery.by_key[("gear-b", "scratch")][0]
    for (product_code, defect_code), images in indexed_gallery.by_key.items():
        for n, image in enumerate(images):
            if defect_code is None:
                continue
            name = f"{product_code}_{defect_code}_{n}.png"
            if image.pk == mislabelled.pk:
                name = "gear-b_dent_99.png"
            (folder / name).write_bytes(indexed_gallery.images[image.pk])
    settings.INDEX_DIR_V1 = str(folder)
    assert build_now("defect", engine="v1").status == "ready"
    return mislabelled, "gear-b_dent_99.png"


def answers(html: str) -> dict[str, str]:
    """engine -> the HTML of its answer section."""
    return dict(re.findall(r'<section class="search-answer"[^>]*data-engine="(v[12])">(.*?)</section>', html, re.S))


def legacy_paths(section: str) -> list[str]:
    return re.findall(r'<div class="result-links result-path">([^<]+)</div>', section)


def test_compare_shows_both_answers_their_overlap_and_the_label_disagreement(
    client, staff_user, indexed_gallery, legacy_twin
):
    mislabelled, file_name = legacy_twin
    client.force_login(staff_user)
    page = client.post(
        CONSOLE, {"image_id": mislabelled.pk, "image_type": "defect", "top_k": 5, "compare": "on"}
    ).content.decode()
    sections = answers(page)
    assert set(sections) == {"v1", "v2"}, page[:3000]
    v2_ids = [image_id for image_id, _ in cards(sections["v2"])]
    paths = legacy_paths(sections["v1"])
    assert len(v2_ids) == len(paths) == 5 and v2_ids[0] == mislabelled.pk and paths[0].endswith(file_name)
    # The two galleries hold the same pictures, embedded by the same model: the same five come back.
    v2_hashes = {hashlib.sha256(indexed_gallery.images[i]).hexdigest() for i in v2_ids}
    v1_hashes = {hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}
    assert len(v2_hashes & v1_hashes) == 5
    assert 'data-overlap="5"' in page and page.count("in-both") == 10
    # The query picture is in both answers: its file name says dent, the catalog says scratch.
    rows = re.findall(r'<tr class="disagreement" data-image-id="(\d+)">(.*?)</tr>', page, re.S)
    assert [int(image_id) for image_id, _ in rows] == [mislabelled.pk]
    assert file_name in rows[0][1] and "gear-b / dent" in rows[0][1] and "gear-b / scratch" in rows[0][1]
    # Each engine's search is in the history.
    assert sorted(SearchLog.objects.values_list("engine", flat=True)) == ["v1", "v2"]


def test_leaving_the_query_image_out_works_on_both_engines(client, staff_user, indexed_gallery, legacy_twin):
    mislabelled, file_name = legacy_twin
    client.force_login(staff_user)
    page = client.post(
        CONSOLE,
        {"image_id": mislabelled.pk, "exclude_self": "on", "image_type": "defect", "top_k": 5, "compare": "on"},
    ).content.decode()
    sections = answers(page)
    assert mislabelled.pk not in [image_id for image_id, _ in cards(sections["v2"])]
    paths = legacy_paths(sections["v1"])
    # V1 has no image ids: the query picture is left out by its content hash.
    assert len(paths) == 5 and not any(p.endswith(file_name) for p in paths)
    assert 'class="disagreement"' not in page and 'data-overlap="5"' in page


def test_compare_is_offered_only_with_both_engines_and_says_what_is_missing(client, staff_user, indexed_gallery):
    client.force_login(staff_user)
    page = client.get(CONSOLE).content.decode()
    assert re.search(r'<input type="checkbox" name="compare"[^>]*disabled', page)
    assert "Needs an active V1 and an active V2 build" in page
    # A compare request that slips through anyway is refused with the reason, not half answered.
    refused = client.post(
        CONSOLE, {"text": "dent", "image_type": "defect", "top_k": 5, "compare": "on"}
    ).content.decode()
    assert "no active v1 defect index" in refused and "data-engine" not in refused
    assert SearchLog.objects.count() == 0


def test_an_available_compare_with_a_missing_v1_index_for_that_type_says_so(
    client, staff_user, indexed_gallery, legacy_twin
):
    client.force_login(staff_user)
    page = client.get(CONSOLE).content.decode()
    assert not re.search(r'<input type="checkbox" name="compare"[^>]*disabled', page)
    normal = client.post(
        CONSOLE, {"text": "dent", "image_type": "normal", "top_k": 5, "compare": "on"}
    ).content.decode()
    assert "no active v1 normal index" in normal and "data-engine" not in normal
    assert SearchLog.objects.count() == 0
