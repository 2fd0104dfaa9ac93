"""The calibrated "no match" core (indexing/calibration.py) on hand-made vectors whose thresholds
and confidences are worked out below by hand. No database."""

from __future__ import annotations

import json

import numpy as np
import pytest

from indexing.artifacts import pack_artifacts, unpack_artifacts
from indexing.calibration import (
    MODE_DEFECT_REGION,
    MODE_WHOLE,
    Calibration,
    calibrate,
    calibrate_build,
    calibrate_records,
    loo_matches,
)
from indexing.focus import FocusDescriptors


def unit(*degrees: float) -> np.ndarray:
    """Unit vectors in the plane: the score of two of them is the cosine of their angle."""
    radians = np.radians(degrees)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


# a1 0°, a2 10°, b1 40°, b2 60°. Known-kind matches (nearest other picture): a1->a2 and a2->a1 at
# cos 10° = 0.984808 (right, "a"), b1->b2 and b2->b1 at cos 20° = 0.939693 (right, "b").
# Unknown-kind matches (nearest picture of another label, always wrong): a1->b1 cos 40° = 0.766044
# and a2->b1 cos 30° = 0.866025 (both "b"), b1->a2 cos 30° = 0.866025 and b2->a2 cos 50° = 0.642788
# (both "a").
VECTORS = unit(0, 10, 40, 60)
LABELS = ["a", "a", "b", "b"]
HASHES = ["h-a1", "h-a2", "h-b1", "h-b2"]


def knots(calibration: Calibration, label: str | None) -> list[list[float]]:
    return calibration.to_dict()["labels"][label]["knots"] if label else calibration.to_dict()["pooled"]["knots"]


def judged(calibration: Calibration, label: str, score: float) -> tuple[float, bool]:
    assessment = calibration.assess(label, score)
    return assessment.confidence, assessment.confident


def test_the_leave_one_out_matches_of_each_picture():
    matches = loo_matches(VECTORS, LABELS, HASHES)
    found = sorted(zip(matches.predicted, np.round(matches.scores, 6), matches.correct, matches.open_set, strict=True))
    assert matches.queries == 4
    assert found == [
        ("a", 0.642788, False, True),
        ("a", 0.866025, False, True),
        ("a", 0.984808, True, False),
        ("a", 0.984808, True, False),
        ("b", 0.766044, False, True),
        ("b", 0.866025, False, True),
        ("b", 0.939693, True, False),
        ("b", 0.939693, True, False),
    ]


def test_thresholds_and_confidences_worked_out_by_hand():
    calibration = calibrate(VECTORS, LABELS, HASHES, label_field="defect_code", prior_weight=0)
    assert calibration is not None
    # "a" matches: right 0.984808 x2, wrong 0.866025 and 0.642788. Share right at or above each
    # of its scores: 2/4, 2/3, 2/2. The first step reaching 0.9 is the threshold.
    assert knots(calibration, "a") == [[0.642787, 0.5], [0.866025, 0.6666], [0.984807, 1.0]]
    assert calibration.curve("a").threshold == 0.984807
    # "b" matches: right 0.939693 x2, wrong 0.866025 and 0.766044: 2/4, 2/3, 2/2.
    assert knots(calibration, "b") == [[0.766044, 0.5], [0.866025, 0.6666], [0.939692, 1.0]]
    assert calibration.curve("b").threshold == 0.939692
    # All eight matches at each score: 4/8, 4/7, 4/6, 4/4 (and 2/2 above).
    assert knots(calibration, None) == [[0.642787, 0.5], [0.766044, 0.5714], [0.866025, 0.6666], [0.939692, 1.0]]
    assert judged(calibration, "a", 0.99) == judged(calibration, "a", 0.984808) == (1.0, True)
    # Above every wrong "a" but below every right one: no evidence either way, the lower step holds.
    assert judged(calibration, "a", 0.95) == (0.6666, False)
    assert judged(calibration, "b", 0.95) == (1.0, True) and judged(calibration, "b", 0.9) == (0.6666, False)
    assert judged(calibration, "a", 0.6) == (0.0, False)  # weaker than any "a" match ever seen
    assert judged(calibration, "never-matched", 0.95) == (1.0, True)  # the pooled curve
    assert calibration.counts["a"] == {"matches": 2, "correct": 2, "open_set_matches": 2}
    assert calibration.summary["loo_top1_accuracy"] == 1.0


def test_a_label_nothing_else_resembles_is_not_trusted_below_its_own_matches():
    # c (120°, 125°) is far from a and b: no unknown-kind match ever lands on c, so no wrong "c"
    # answer is ever seen. A photo of a new kind whose nearest picture is a "c" at cos 25° is still
    # not a confident "c": the "c" matches seen all score cos 5°.
    calibration = calibrate(
        unit(0, 10, 40, 50, 120, 125), ["a", "a", "b", "b", "c", "c"], list("123456"), label_field="x", prior_weight=0
    )
    assert calibration is not None and calibration.counts["c"]["open_set_matches"] == 0
    assert knots(calibration, "c") == [[0.996194, 1.0]]
    assert judged(calibration, "c", float(np.cos(np.radians(25)))) == (0.0, False)
    assert judged(calibration, "c", 0.996) == (0.0, False)
    assert judged(calibration, "c", 0.996195) == (1.0, True)


def test_the_same_picture_never_matches_itself():
    # a1 catalogued twice and b2 twice (same bytes, same hash): nobody's match is its own copy at
    # 1.0, each picture is asked once, and the calibration is the one without the copies.
    with_copies = calibrate(
        np.concatenate([VECTORS, VECTORS[[0, 3]]]),
        [*LABELS, "a", "b"],
        [*HASHES, "h-a1", "h-b2"],
        label_field="defect_code",
        prior_weight=0,
    )
    without = calibrate(VECTORS, LABELS, HASHES, label_field="defect_code", prior_weight=0)
    assert with_copies is not None and without is not None
    assert with_copies.to_dict() == without.to_dict()
    matches = loo_matches(np.concatenate([VECTORS, VECTORS[[0, 3]]]), [*LABELS, "a", "b"], [*HASHES, "h-a1", "h-b2"])
    assert matches.queries == 4 and matches.scores.max() < 0.99
    # The same bytes catalogued under another label too: still not a (wrong) match of itself,
    # neither as a known kind nor with its own label left out.
    relabelled = loo_matches(np.concatenate([VECTORS, VECTORS[[0]]]), [*LABELS, "b"], [*HASHES, "h-a1"])
    assert relabelled.queries == 4 and relabelled.scores.max() < 0.99


def test_a_label_with_few_matches_leans_on_the_pooled_curve():
    calibration = calibrate(VECTORS, LABELS, HASHES, label_field="defect_code", prior_weight=2)
    assert calibration is not None
    # Pooled, blended with the overall share right (4/8) by 2 pseudo-matches:
    # (4+1)/(8+2), (4+1)/(7+2), (4+1)/(6+2), (4+1)/(4+2), then (2+1)/(2+2) at 0.984808.
    assert knots(calibration, None) == [
        [0.642787, 0.5],
        [0.766044, 0.5555],
        [0.866025, 0.625],
        [0.939692, 0.8333],
    ]
    # "a", blended with the pooled figure at each of its scores: (2 + 2x0.5)/(4+2),
    # (2 + 2x0.625)/(3+2), (2 + 2x0.75)/(2+2). Two right matches alone no longer reach 0.9.
    assert knots(calibration, "a") == [[0.642787, 0.5], [0.866025, 0.65], [0.984807, 0.875]]
    assert calibration.curve("a").threshold is None and calibration.assess("a", 1.0).confident is False
    # "b": (2 + 2x5/9)/(4+2), (2 + 2x0.625)/(3+2), (2 + 2x5/6)/(2+2) = 0.9166: its top does.
    assert knots(calibration, "b") == [[0.766044, 0.5185], [0.866025, 0.65], [0.939692, 0.9166]]
    assert calibration.curve("b").threshold == 0.939692
    assert judged(calibration, "never-matched", 1.0) == (0.8333, False)


def test_confidence_rises_with_the_score_and_clears_exactly_at_the_target():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(5, 8))
    labels = [str(i % 5) for i in range(300)]
    vectors = centres[[int(label) for label in labels]] + rng.normal(scale=0.9, size=(300, 8))
    hashes = [f"h{i}" for i in range(300)]
    full = calibrate(vectors, labels, hashes, label_field="x", target_precision=0.8, max_knots=1000)
    thin = calibrate(vectors, labels, hashes, label_field="x", target_precision=0.8, max_knots=6)
    assert full is not None and thin is not None
    scores = np.linspace(-0.2, 1.0, 400)
    for label in "01234":
        assert len(thin.curve(label).knots) <= 6 and len(full.curve(label).knots) > 6
        assert thin.curve(label).threshold == full.curve(label).threshold
        confidences = [thin.assess(label, s).confidence for s in scores]
        assert confidences == sorted(confidences)
        for score, confidence in zip(scores, confidences, strict=True):
            assert thin.assess(label, score).confident == (confidence >= 0.8)
            assert confidence <= full.assess(label, score).confidence  # thinning only lowers it
    assert any(thin.curve(label).threshold is not None for label in "01234")


def test_queries_are_capped_and_spread_over_the_labels():
    labels = ["big"] * 12 + ["mid"] * 3 + ["one"]
    vectors = np.random.default_rng(0).normal(size=(16, 4))
    matches = loo_matches(vectors, labels, [f"h{i}" for i in range(16)], max_queries=6)
    # one: 1 (all it has); the other two share the rest: 2 each.
    assert matches.queries == 5
    assert loo_matches(vectors, labels, [f"h{i}" for i in range(16)]).queries == 16


def test_nothing_to_learn_from_is_no_calibration():
    assert calibrate(VECTORS, ["a"] * 4, HASHES, label_field="x") is None  # no wrong answer possible
    assert calibrate(VECTORS, LABELS, ["same"] * 4, label_field="x") is None  # one picture
    records = [{"image_id": i, "product_code": "p", "defect_code": None, "sha256": f"h{i}"} for i in range(4)]
    assert calibrate_records(VECTORS, records, engine="v2", image_type="defect") is None  # no defect types


def test_the_calibration_travels_in_the_manifest_and_old_builds_have_none(tmp_path):
    records = [
        {"image_id": i + 1, "defect_code": label, "product_code": "p", "sha256": sha}
        for i, (label, sha) in enumerate(zip(LABELS, HASHES, strict=True))
    ]
    entry = calibrate_build(VECTORS, records, engine="v2", image_type="defect", target_precision=0.9)
    assert set(entry) == {MODE_WHOLE}
    direct = calibrate(VECTORS, LABELS, HASHES, label_field="defect_code")
    assert direct is not None and entry[MODE_WHOLE] == direct.to_dict()

    def loaded(manifest: dict):  # type: ignore[no-untyped-def]
        files = pack_artifacts(
            ids=np.arange(1, 5),
            vectors=VECTORS,
            metadata=records,
            manifest={"build_id": 1, **manifest},
            into=tmp_path / f"build-{len(list(tmp_path.iterdir()))}",
        )
        return unpack_artifacts(files)

    served = loaded({"calibration": json.loads(json.dumps(entry))}).calibration_for(MODE_WHOLE)
    assert served is not None and served.label_field == "defect_code"
    for label, score in [("a", 0.99), ("a", 0.95), ("b", 0.95), ("b", 0.7), ("x", 0.9)]:
        assert served.assess(label, score) == direct.assess(label, score)
    assert loaded({}).calibration_for(MODE_WHOLE) is None  # a build made before calibration
    assert loaded({"calibration": {MODE_WHOLE: {**entry[MODE_WHOLE], "version": 99}}}).calibrations == {}


def test_defect_region_descriptors_are_calibrated_as_defect_focused_search_compares_them():
    # Feature-like descriptors: all positive, so uncentred they all point the same way.
    descriptors = (VECTORS + 4.0).astype(np.float16)
    focus = FocusDescriptors(
        ids=np.array([4, 3, 2, 1]),  # not in record order
        descriptors=descriptors,
        boxes=np.zeros((4, 4), dtype=np.float32),
        patches=4,
        feature_fingerprint="test",
    )
    records = [
        {"image_id": image_id, "defect_code": label, "sha256": f"h{image_id}"}
        for image_id, label in zip([1, 2, 3, 4], ["b", "b", "a", "a"], strict=True)
    ]
    entry = calibrate_build(
        np.eye(4, 2, dtype=np.float32), records, engine="v2", image_type="defect", region_descriptors=focus.to_bytes()
    )
    centred = calibrate(focus.centred(descriptors), LABELS, ["h4", "h3", "h2", "h1"], label_field="defect_code")
    uncentred = calibrate(descriptors, LABELS, ["h4", "h3", "h2", "h1"], label_field="defect_code")
    assert centred is not None and uncentred is not None and centred.to_dict() != uncentred.to_dict()
    assert entry[MODE_DEFECT_REGION] == centred.to_dict()


@pytest.mark.parametrize("target", [0, 1.5])
def test_a_target_outside_zero_to_one_is_refused(target):
    with pytest.raises(ValueError):
        calibrate(VECTORS, LABELS, HASHES, label_field="x", target_precision=target)
