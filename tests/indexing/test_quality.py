"""Retrieval quality: the numeric core on vector sets small enough to work out by hand, then a real
build that stores its figures (row, manifest, API, admin), activation of a worse build, and
`evaluate_index` on a held-out folder."""

from __future__ import annotations

import itertools
import json
import time
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command
from django.urls import reverse

from catalog.models import DefectType, Image, Product
from catalog.storage import read_object
from indexing import quality
from indexing.artifacts import MANIFEST_FILE
from indexing.evaluation import build_evaluate
from indexing.models import BuildStatus, CachedEmbedding, IndexBuild
from indexing.services import build_quality_comparison
from tests.helpers import image_bytes
from tests.indexing.conftest import add_images, build_now

# --- the numeric core ------------------------------------------------------------------------

# Six unit vectors on a circle (degrees): the nearest neighbours are plain from the angles.
ANGLES = [0, 10, 25, 90, 100, 115]
DEFECTS = ["A", "A", "B", "B", "B", "A"]
PRODUCTS = ["P", "P", "P", "Q", "Q", "Q"]


def circle(angles: list[float]) -> np.ndarray:
    radians = np.deg2rad(np.asarray(angles, dtype=np.float64))
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


def records(defects: list[str], products: list[str], hashes: list[str]) -> list[dict]:
    return [
        {"image_id": 100 + i, "defect_code": d, "product_code": p, "sha256": h}
        for i, (d, p, h) in enumerate(zip(defects, products, hashes, strict=True))
    ]


def distinct_hashes(count: int) -> list[str]:
    return [f"h{i}" for i in range(count)]


def brute_force_random_ap(relevant: int, available: int, k: int = 10) -> float:
    """Mean AP@k over every ordering of `available` items of which `relevant` are relevant."""
    total, count = 0.0, 0
    for order in itertools.permutations([1] * relevant + [0] * (available - relevant)):
        hits = np.array(order[:k])
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        total += (precision * hits).sum() / min(relevant, k)
        count += 1
    return total / count


def test_figures_and_chance_levels_on_a_set_worked_out_by_hand():
    report = quality.evaluate_build(
        image_type="defect", vectors=circle(ANGLES), records=records(DEFECTS, PRODUCTS, distinct_hashes(6))
    )
    assert report["main_label"] == "defect_type" and report["mode"] == "leave_one_out"
    assert (report["vector_count"], report["query_count"], report["sampled"]) == (6, 6, False)
    defect = report["labels"]["defect_type"]
    # Nearest: 0->1 A ok, 1->0 A ok, 2->1 (B got A), 3->4 ok, 4->3 ok, 5->4 (A got B).
    assert defect["top1_accuracy"] == {"value": 0.6667, "chance": 0.4}  # chance: 2 of the 5 others share the label
    # With 5 others every vote is over all of them: the query's own class is always outvoted 3 to 2.
    assert defect["top5_vote_accuracy"] == {"value": 0.0, "chance": 0.0}
    # AP@10 per query: 0.7, 0.7, (1/3+1/2)/2, (1+2/3)/2, (1+2/3)/2, (1/4+2/5)/2.
    assert defect["map_at_10"]["value"] == round((0.7 + 0.7 + 5 / 12 + 5 / 6 + 5 / 6 + 0.325) / 6, 4)
    # Random ranking of 5 with 2 relevant: sum_i (0.4 + 0.1 (i-1)) / i over i = 1..5, halved.
    assert defect["map_at_10"]["chance"] == 0.5925 == round(brute_force_random_ap(2, 5), 4)
    assert defect["majority_class"] == {"label": "A", "rate": 0.5}
    assert defect["per_class"] == [
        {"label": "A", "queries": 3, "recall": 0.6667, "chance": 0.4},
        {"label": "B", "queries": 3, "recall": 0.6667, "chance": 0.4},
    ]
    assert defect["confusion"] == {"labels": ["A", "B"], "matrix": [[2, 1], [1, 2]]}
    product = report["labels"]["product"]
    assert product["top1_accuracy"] == {"value": 1.0, "chance": 0.4}
    assert json.loads(json.dumps(report)) == report  # stored as JSON as it is


def test_the_normal_index_is_measured_on_products_only():
    report = quality.evaluate_build(
        image_type="normal", vectors=circle(ANGLES), records=records(DEFECTS, PRODUCTS, distinct_hashes(6))
    )
    assert report["main_label"] == "product" and list(report["labels"]) == ["product"]
    assert quality.main_top1(report) == 1.0


def test_copies_of_the_query_picture_are_left_out_of_its_search():
    # Row 6 is row 2's picture again (same bytes, same vector): it must not count as row 2's answer.
    vectors = circle([*ANGLES, 25])
    labels = records([*DEFECTS, "B"], [*PRODUCTS, "P"], [*distinct_hashes(6), "h2"])
    report = quality.evaluate_build(image_type="defect", vectors=vectors, records=labels)
    defect = report["labels"]["defect_type"]
    assert report["duplicate_vectors"] == 1
    assert defect["top1_accuracy"]["value"] == round(4 / 7, 4)  # 2 and 6 both find row 1 (A)
    # A random neighbour: rows 2 and 6 (B) 2 B among the 5 others; rows 0, 1, 5 (A) 2 A among 6;
    # rows 3, 4 (B) 3 B among 6.
    assert defect["top1_accuracy"]["chance"] == round((2 * 2 / 5 + 3 * 2 / 6 + 2 * 3 / 6) / 7, 4)

    neighbours = quality.loo_neighbours(vectors, [r["sha256"] for r in labels], ids=np.arange(100, 107))
    assert 106 not in neighbours.ids[2] and 102 not in neighbours.ids[6]
    assert list(neighbours.available) == [6, 6, 5, 6, 6, 6, 5]
    assert neighbours.ids[2][0] == 101 and neighbours.ids[0][0] == 101
    assert neighbours.scores[0][0] == pytest.approx(np.cos(np.deg2rad(10)), abs=1e-6)
    assert np.all(np.diff(neighbours.scores[0][:6]) <= 1e-6)  # best first
    assert neighbours.ids[0][6] == -1 and np.isnan(neighbours.scores[0][6])  # only 6 others

    # Many copies of one picture crowd the top of its own answers: the search looks past all of them.
    crowd = circle([0] * 12 + [40, 50, 60, 70, 80])
    crowded = quality.loo_neighbours(crowd, ["same"] * 12 + distinct_hashes(5), ids=np.arange(17))
    assert crowded.ids[0][:5].tolist() == [12, 13, 14, 15, 16] and crowded.available[0] == 5

    # The same vectors as different pictures: each finds its twin, and the figure rises.
    apart = quality.evaluate_build(
        image_type="defect", vectors=vectors, records=records([*DEFECTS, "B"], [*PRODUCTS, "P"], distinct_hashes(7))
    )
    assert apart["labels"]["defect_type"]["top1_accuracy"]["value"] == round(6 / 7, 4)


def test_v1_records_carry_their_labels_from_file_names():
    legacy = [
        {"image_id": i, "product": p, "defect": d, "sha256": f"h{i}"}
        for i, (d, p) in enumerate(zip(DEFECTS, PRODUCTS, strict=True))
    ]
    report = quality.evaluate_build(image_type="defect", vectors=circle(ANGLES), records=legacy)
    assert report["labels"]["defect_type"]["top1_accuracy"]["value"] == 0.6667
    assert report["labels"]["product"]["top1_accuracy"]["value"] == 1.0


def test_a_query_without_a_hash_still_leaves_itself_out():
    report = quality.evaluate_build(
        image_type="defect", vectors=circle(ANGLES), records=records(DEFECTS, PRODUCTS, [""] * 6)
    )
    assert report["labels"]["defect_type"]["top1_accuracy"]["value"] == 0.6667


def test_held_out_queries_leave_out_gallery_copies_of_themselves():
    gallery = records(DEFECTS, PRODUCTS, distinct_hashes(6))
    report = quality.evaluate_queries(
        image_type="defect",
        vectors=circle(ANGLES),
        records=gallery,
        query_vectors=circle([5, 115]),  # a new photo near row 0, and a copy of row 5 (A)
        query_products=["P", "Q"],
        query_defects=["A", "A"],
        query_hashes=["new", "h5"],
    )
    assert report["mode"] == "held_out" and report["query_count"] == 2
    defect = report["labels"]["defect_type"]
    assert defect["top1_accuracy"]["value"] == 0.5  # the copy finds row 4 (B), not itself
    assert defect["top1_accuracy"]["chance"] == round((3 / 6 + 2 / 5) / 2, 4)
    assert defect["confusion"] == {"labels": ["A", "B"], "matrix": [[1, 1], [0, 0]]}


def test_the_vote_breaks_ties_by_the_nearest_neighbour():
    assert quality._vote(np.array([[1, 2, 1, 2, 3], [3, 2, 2, 1, -1], [-1, -1, 4, -1, -1]])).tolist() == [1, 2, 4]


def test_map_divides_by_at_most_ten_relevant_images():
    # 13 pictures of one product: every ranking has 10 relevant hits in its first 10, so AP@10 = 1.
    rng = np.random.default_rng(2)
    report = quality.evaluate_build(
        image_type="normal",
        vectors=rng.normal(size=(13, 4)).astype(np.float32),
        records=records(["x"] * 13, ["P"] * 13, distinct_hashes(13)),
    )
    assert report["labels"]["product"]["map_at_10"] == {"value": 1.0, "chance": 1.0, "queries": 13}


def test_large_builds_are_measured_on_a_seeded_sample():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(60, 8)).astype(np.float32)
    labels = records([f"d{i % 3}" for i in range(60)], ["p"] * 60, distinct_hashes(60))
    first = quality.evaluate_build(image_type="defect", vectors=vectors, records=labels, max_queries=25, seed=3)
    again = quality.evaluate_build(image_type="defect", vectors=vectors, records=labels, max_queries=25, seed=3)
    assert (first["query_count"], first["sampled"], first["sample_seed"]) == (25, True, 3)
    assert first["labels"]["defect_type"]["queries"] == 25
    first.pop("seconds"), again.pop("seconds")
    assert first == again


def test_ten_thousand_vectors_are_measured_in_a_few_seconds():
    rng = np.random.default_rng(0)
    count = 10_000
    classes = rng.integers(0, 20, count)
    vectors = (rng.normal(size=(20, 512))[classes] + 2 * rng.normal(size=(count, 512))).astype(np.float32)
    labels = records([f"d{c}" for c in classes], [f"p{c % 4}" for c in classes], distinct_hashes(count))
    started = time.perf_counter()
    report = quality.evaluate_build(image_type="defect", vectors=vectors, records=labels)
    assert time.perf_counter() - started < 10
    defect = report["labels"]["defect_type"]
    assert report["query_count"] == quality.MAX_QUERIES and report["sampled"]
    assert defect["top1_accuracy"]["value"] > 0.9 and defect["top1_accuracy"]["chance"] == pytest.approx(0.05, abs=0.01)


def test_differences_to_another_build():
    mine = quality.evaluate_build(
        image_type="defect", vectors=circle(ANGLES), records=records(DEFECTS, PRODUCTS, distinct_hashes(6))
    )
    theirs = json.loads(json.dumps(mine))
    theirs["labels"]["defect_type"]["top1_accuracy"]["value"] = 0.5
    theirs["labels"]["defect_type"]["per_class"][1]["recall"] = 1.0
    deltas = quality.quality_deltas(mine, theirs)
    assert deltas["defect_type"]["top1_accuracy"] == 0.1667 and deltas["defect_type"]["map_at_10"] == 0.0
    assert deltas["defect_type"]["per_class"] == {"A": 0.0, "B": -0.3333}
    assert quality.quality_deltas(mine, None) == {} and quality.main_top1(None) is None


# --- a real build ----------------------------------------------------------------------------


@pytest.fixture
def labelled_catalog(db, product, scratch) -> None:  # type: ignore[no-untyped-def]
    gear = Product.objects.create(product_code="gear-b", product_name="기어 B")
    dent = DefectType.objects.create(defect_code="dent", defect_name_ko="찍힘", defect_name_en="Dent")
    add_images(product, scratch, 4)
    add_images(product, dent, 3, start=10)
    add_images(gear, dent, 3, start=20)
    add_images(gear, scratch, 1, start=0)  # the same photo as bracket-a's first: a copy across products


def independent_top1(build: IndexBuild) -> float:
    """Top-1 defect-type accuracy computed without indexing.quality or FAISS: the catalog's rows
    and their cached embeddings, cosine of every pair, the query's own picture left out."""
    images = list(Image.objects.filter(image_type="defect").select_related("defect_type").order_by("id"))
    cached = dict(
        CachedEmbedding.objects.filter(model_fingerprint=build.model_fingerprint).values_list("sha256", "vector")
    )
    vectors = np.stack([np.frombuffer(bytes(cached[image.sha256]), dtype=np.float32) for image in images])
    similarity = vectors @ vectors.T
    hashes = np.array([image.sha256 for image in images])
    similarity[hashes[:, None] == hashes[None, :]] = -np.inf
    defects = np.array([image.defect_type.defect_code for image in images])
    return round(float((defects[similarity.argmax(axis=1)] == defects).mean()), 4)


@pytest.mark.django_db
def test_a_build_stores_its_quality_on_the_row_in_the_manifest_and_in_the_api(labelled_catalog, staff_api):
    build = build_now()
    assert build.status == BuildStatus.READY, build.error
    stored = build.quality
    assert stored["vector_count"] == stored["query_count"] == 11 and stored["duplicate_vectors"] == 1
    defect = stored["labels"]["defect_type"]
    assert defect["queries"] == 11 and [row["label"] for row in defect["per_class"]] == ["dent", "scratch"]
    assert defect["top1_accuracy"]["value"] == independent_top1(build)
    # A random neighbour: dent 5 of 10 others; scratch 4 of 10, or 3 of 9 for the two copies of one photo.
    assert defect["top1_accuracy"]["chance"] == round((6 * 5 / 10 + 3 * 4 / 10 + 2 * 3 / 9) / 11, 4)
    assert sum(map(sum, defect["confusion"]["matrix"])) == 11
    assert "quality_s" in build.timings
    manifest = json.loads(read_object(f"{build.artifact_prefix}/{MANIFEST_FILE}"))
    assert manifest["quality"] == stored
    detail = staff_api.get(f"/api/index/builds/{build.pk}/")
    assert detail.status_code == 200 and detail.json()["quality"] == stored
    recomputed = build_evaluate(build=build)
    assert recomputed["labels"] == stored["labels"]  # the command measures the stored vectors the same way


@pytest.mark.django_db
def test_a_build_without_figures_answers_null(staff_api):
    old = IndexBuild.objects.create(image_type="defect", model_name="m", pretrained="p", status="ready")
    assert staff_api.get(f"/api/index/builds/{old.pk}/").json()["quality"] is None


def test_the_schema_describes_the_quality_and_the_confirmation(client, db):
    spec = client.get("/api/schema/?format=json").json()
    schemas = spec["components"]["schemas"]
    detail = spec["paths"]["/api/index/builds/{id}/"]["get"]["responses"]["200"]["content"]["application/json"]
    quality_field = schemas[detail["schema"]["$ref"].rsplit("/", 1)[1]]["properties"]["quality"]
    assert quality_field["nullable"] is True and quality_field["allOf"][0]["$ref"].endswith("/BuildQuality")
    label = schemas["LabelQuality"]["properties"]
    assert {"top1_accuracy", "top5_vote_accuracy", "map_at_10", "per_class", "confusion"} <= set(label)
    assert schemas["QualityFigure"]["properties"]["chance"]["nullable"] is True
    activate = spec["paths"]["/api/index/builds/{id}/activate/"]["post"]
    body = activate["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert schemas[body]["properties"]["confirm"]["type"] == "boolean"
    assert activate["responses"]["409"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/IndexBuildActivateConflict"
    )


# --- activating a worse build ----------------------------------------------------------------


def figures(top1: float) -> dict:
    """A stored quality report with this top-1 defect-type accuracy (the rest from a real one)."""
    report = quality.evaluate_build(
        image_type="defect", vectors=circle(ANGLES), records=records(DEFECTS, PRODUCTS, distinct_hashes(6))
    )
    report["labels"]["defect_type"]["top1_accuracy"]["value"] = top1
    return report


def ready_build(top1: float | None, *, active: bool = False) -> IndexBuild:
    return IndexBuild.objects.create(
        image_type="defect",
        model_name="m",
        pretrained="p",
        status=BuildStatus.READY,
        is_active=active,
        quality=figures(top1) if top1 is not None else None,
    )


@pytest.mark.django_db
def test_the_api_asks_for_confirmation_before_activating_a_worse_build(staff_api):
    current = ready_build(0.8, active=True)
    worse = ready_build(0.5)
    refused = staff_api.post(f"/api/index/builds/{worse.pk}/activate/")
    assert refused.status_code == 409
    body = refused.json()
    assert body["code"] == "worse_than_active" and '"confirm": true' in body["detail"]
    assert "50.0%" in body["detail"] and "80.0%" in body["detail"]
    assert (body["build_top1"], body["active_top1"], body["active_build_id"]) == (0.5, 0.8, current.pk)
    current.refresh_from_db()
    assert current.is_active
    not_a_boolean = staff_api.post(f"/api/index/builds/{worse.pk}/activate/", {"confirm": "yes"}, format="json")
    assert not_a_boolean.status_code == 400
    confirmed = staff_api.post(f"/api/index/builds/{worse.pk}/activate/", {"confirm": True}, format="json")
    assert confirmed.status_code == 200 and confirmed.json()["is_active"]
    # Back to the better one: no question asked. A build without figures cannot be compared: none either.
    assert staff_api.post(f"/api/index/builds/{current.pk}/activate").status_code == 200
    assert staff_api.post(f"/api/index/builds/{ready_build(None).pk}/activate/").status_code == 200


@pytest.mark.django_db
def test_the_comparison_is_top1_on_the_main_label():
    ready_build(0.8, active=True)
    assert build_quality_comparison(build=ready_build(0.79)).is_worse
    assert not build_quality_comparison(build=ready_build(0.8)).is_worse
    assert build_quality_comparison(build=ready_build(0.8)).label == "defect_type"


# --- the admin -------------------------------------------------------------------------------


@pytest.fixture
def staff_client(client, staff_user):  # type: ignore[no-untyped-def]
    client.force_login(staff_user)
    return client


@pytest.mark.django_db
def test_the_build_page_shows_the_figures_the_confusion_matrix_and_the_difference(staff_client, labelled_catalog):
    build = build_now()
    page = staff_client.get(reverse("admin:indexing_indexbuild_change", args=[build.pk])).content.decode()
    assert 'id="quality-panel"' in page and "This is the active build." in page
    defect = build.quality["labels"]["defect_type"]
    assert f"{100 * defect['top1_accuracy']['value']:.1f}%" in page
    assert f"{100 * defect['top1_accuracy']['chance']:.1f}%" in page and "a random neighbour" in page
    assert page.count('class="heat-') == 2 * 2 + 2 * 2  # defect types 2x2, products 2x2
    assert "indexing/build_quality.css" in page and "<script>" not in page.split('id="quality-panel"')[1]

    worse = ready_build(0.1)
    page = staff_client.get(reverse("admin:indexing_indexbuild_change", args=[worse.pk])).content.decode()
    assert f"Differences are to the active build {build.pk}" in page
    delta = 100 * (0.1 - defect["top1_accuracy"]["value"])
    assert f"{delta:+.1f} pp" in page and "quality-worse" in page

    unmeasured = ready_build(None)
    page = staff_client.get(reverse("admin:indexing_indexbuild_change", args=[unmeasured.pk])).content.decode()
    assert "Not measured" in page


@pytest.mark.django_db
def test_the_admin_asks_before_activating_a_worse_build(staff_client):
    current = ready_build(0.8, active=True)
    worse = ready_build(0.5)
    changelist = reverse("admin:indexing_indexbuild_changelist")
    asked = staff_client.post(changelist, {"action": "activate_builds", "_selected_action": [worse.pk], "index": 0})
    assert asked.status_code == 200
    page = asked.content.decode()
    assert 'id="worse-build-confirmation"' in page
    assert f"Build {worse.pk}: top-1 defect type accuracy 50.0%; active build {current.pk}: 80.0%" in page
    current.refresh_from_db()
    assert current.is_active
    confirmed = staff_client.post(
        changelist, {"action": "activate_builds", "_selected_action": [worse.pk], "confirm_worse": "yes"}
    )
    assert confirmed.status_code == 302
    worse.refresh_from_db()
    assert worse.is_active
    better = staff_client.post(changelist, {"action": "activate_builds", "_selected_action": [current.pk], "index": 0})
    assert better.status_code == 302  # no question for a build that scores higher
    current.refresh_from_db()
    assert current.is_active


# --- evaluate_index ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_evaluate_index_prints_the_figures_of_the_build_and_of_a_held_out_folder(labelled_catalog, tmp_path: Path):
    build = build_now()
    out = StringIO()
    call_command("evaluate_index", stdout=out)
    text = out.getvalue()
    assert f"Build {build.pk} (v2 defect), leave-one-out" in text and "11 queries" in text
    top1 = build.quality["labels"]["defect_type"]["top1_accuracy"]
    assert "top-1 accuracy" in text and f"{100 * top1['value']:.1f}%" in text and "chance" in text
    assert "confusion (rows: true class" in text and "recall per class" in text

    folder = tmp_path / "held-out"
    folder.mkdir()
    (folder / "bracket-a_scratch_copy.jpg").write_bytes(image_bytes(seed=1))  # a catalog picture again
    (folder / "bracket-a_dent_new.jpg").write_bytes(image_bytes(seed=70))
    (folder / "gear-b_dent_new.png").write_bytes(image_bytes(fmt="PNG", seed=71))
    (folder / "gear-b_normal_ok.jpg").write_bytes(image_bytes(seed=72))  # a normal photo: not a defect query
    (folder / "notes.txt").write_text("not a photo")
    out = StringIO()
    call_command("evaluate_index", "--build", str(build.pk), "--queries", str(folder), "--json", stdout=out)
    result = json.loads(out.getvalue())
    measured = result["quality"]
    assert result["build_id"] == build.pk and measured["mode"] == "held_out" and measured["query_count"] == 3
    defect = measured["labels"]["defect_type"]
    assert {row["label"]: row["queries"] for row in defect["per_class"]} == {"dent": 2, "scratch": 1}
    # The copy may not find its catalog original: 4 of the 10 other vectors are scratches, not 5 of 11.
    assert next(row for row in defect["per_class"] if row["label"] == "scratch")["chance"] == 0.4
    assert sorted(name for name, _ in result["skipped"]) == ["gear-b_normal_ok.jpg", "notes.txt"]
    out = StringIO()
    call_command("evaluate_index", "--queries", str(folder), stdout=out)
    assert "held-out photos in" in out.getvalue() and "3 queries against 11 vectors" in out.getvalue()
