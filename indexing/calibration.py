"""Calibrated "no match": per-label score thresholds and match confidences, learnt from a build's
own leave-one-out matches. Django-free.

Each picture of the build (one row per content hash) is asked of the rest of the build twice:

- *known kind* (leave one out): its best match among the other pictures (never the same bytes).
  The match names the right label (defect type; product for a normal index) or a wrong one.
- *unknown kind* (leave its label out): its best match among the pictures of other labels: what a
  photo of a kind the catalog lacks would get. Always a wrong answer.

For a label c and a score t, precision(c, t) is the share of right answers among the matches
labelled c that score >= t (unknown-kind matches weigh OPEN_SET_WEIGHT each): the precision of the
rule "accept a top match labelled c when its score is at least t". Few matches are not trusted on
their own: precision(c, t) = (right + PRIOR_WEIGHT x pooled(t)) / (matches + PRIOR_WEIGHT), where
pooled(t) is the same figure over all labels, itself blended the same way with the overall share
of right answers. A label's curve has a step at each of its own match scores (a score below all of
them has no evidence: confidence 0), made non-decreasing (a score gets the best precision of any
step at or below it) and thinned to at most MAX_KNOTS steps. Its threshold is the lowest step
whose precision reaches the target; a match clears when its score is at least the threshold of
its label, which is exactly when its confidence reaches the target. A label that never appeared
as a match uses the pooled curve.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexing.focus import FocusDescriptors

CALIBRATION_VERSION = 1
DEFAULT_TARGET_PRECISION = 0.9
# Pseudo-matches of the pooled curve mixed into each label's curve: a label with few matches
# follows the pooled curve, one with many follows its own.
PRIOR_WEIGHT = 5.0
# An unknown-kind match weighs as much as a known-kind one: as if half the photos asked were of a
# kind the catalog lacks. Conservative on purpose; a photo that does not clear goes to a person.
OPEN_SET_WEIGHT = 1.0
MAX_KNOTS = 32
# Pictures asked at most (evenly spread over the labels): the work grows with queries x vectors.
MAX_QUERIES = 10_000
# Score matrix elements per block (float32): bounds the memory of the exhaustive search.
_BLOCK_ELEMENTS = 1 << 23
_SCORE_DECIMALS = 6
_CONFIDENCE_DECIMALS = 4
COUNT_KEYS = ("matches", "correct", "open_set_matches")
SUMMARY_KEYS = ("queries", "known_matches", "loo_top1_accuracy", "prior_weight", "open_set_weight")

# The score spaces a build answers in, each calibrated on its own: whole-image search (the build's
# vectors) and, in a V2 defect build with defect-region descriptors (indexing/focus.py),
# defect-focused search. The names are the `focus` modes a search answers with.
MODE_WHOLE = "whole"
MODE_DEFECT_REGION = "defect"

# The record field that holds a vector's label, per (engine, image type). V1 labels come from the
# legacy file names, V2 labels from the catalog.
LABEL_FIELDS: dict[tuple[str, str], str] = {
    ("v2", "defect"): "defect_code",
    ("v2", "normal"): "product_code",
    ("v1", "defect"): "defect",
    ("v1", "normal"): "product",
}


@dataclass(frozen=True)
class LooMatches:
    """The top-1 matches of the leave-one-out queries, as parallel arrays."""

    predicted: list[str]  # the label of the match
    scores: np.ndarray  # float64 cosine
    correct: np.ndarray  # bool
    open_set: np.ndarray  # bool: an unknown-kind match (its own label left out)
    queries: int


@dataclass(frozen=True)
class MatchAssessment:
    confidence: float
    confident: bool


@dataclass(frozen=True)
class Curve:
    """(score, precision) steps, both ascending. A score takes the precision of the highest step
    at or below it; below the first step there is no evidence (0)."""

    knots: tuple[tuple[float, float], ...]
    threshold: float | None  # lowest step score whose precision reaches the target; None: never

    @classmethod
    def from_knots(cls, knots: Sequence[Sequence[float]], target: float) -> Curve:
        steps = tuple((float(score), float(confidence)) for score, confidence in knots)
        threshold = next((score for score, confidence in steps if confidence >= target), None)
        return cls(knots=steps, threshold=threshold)

    def confidence(self, score: float) -> float:
        position = bisect.bisect_right([knot[0] for knot in self.knots], score) - 1
        return self.knots[position][1] if position >= 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "knots": [list(knot) for knot in self.knots]}


@dataclass(frozen=True)
class Calibration:
    label_field: str
    target_precision: float
    pooled: Curve
    curves: Mapping[str, Curve]
    # label -> {"matches", "correct", "open_set_matches"}: what its curve was learnt from
    counts: Mapping[str, Mapping[str, int]]
    # queries, known_matches, loo_top1_accuracy, prior_weight, open_set_weight
    summary: Mapping[str, Any]

    def assess(self, label: str | None, score: float) -> MatchAssessment:
        """How far to trust a match labelled `label` with this score. A label without matches of
        its own in the calibration uses the pooled curve."""
        curve = self.curve(label)
        return MatchAssessment(
            confidence=curve.confidence(score), confident=curve.threshold is not None and score >= curve.threshold
        )

    def curve(self, label: str | None) -> Curve:
        return self.curves.get(label, self.pooled) if label is not None else self.pooled

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": CALIBRATION_VERSION,
            "label_field": self.label_field,
            "target_precision": self.target_precision,
            **self.summary,
            "pooled": self.pooled.to_dict(),
            "labels": {
                label: {**self.counts.get(label, {}), **curve.to_dict()} for label, curve in self.curves.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Any) -> Calibration | None:
        """The calibration a manifest holds; None for none, or one this code does not know."""
        if not isinstance(data, Mapping) or data.get("version") != CALIBRATION_VERSION:
            return None
        target = float(data["target_precision"])
        labels: Mapping[str, Mapping[str, Any]] = data.get("labels", {})
        return cls(
            label_field=str(data["label_field"]),
            target_precision=target,
            pooled=Curve.from_knots(data["pooled"]["knots"], target),
            curves={label: Curve.from_knots(entry["knots"], target) for label, entry in labels.items()},
            counts={
                label: {key: int(entry[key]) for key in COUNT_KEYS if key in entry} for label, entry in labels.items()
            },
            summary={key: data[key] for key in SUMMARY_KEYS if key in data},
        )


def label_field_for(*, engine: str, image_type: str) -> str:
    return LABEL_FIELDS[(engine, image_type)]


def _normalised(vectors: np.ndarray) -> np.ndarray:
    vectors = np.array(vectors, dtype=np.float32, copy=True)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def _query_rows(label_codes: np.ndarray, hash_codes: np.ndarray, max_queries: int) -> np.ndarray:
    """One row per picture (its first), at most `max_queries`: every label keeps an equal share
    (all of a smaller label's pictures), evenly spread within the label."""
    _, first = np.unique(hash_codes, return_index=True)
    rows = np.sort(first)
    if len(rows) <= max_queries:
        return rows
    by_label = [rows[label_codes[rows] == code] for code in np.unique(label_codes[rows])]
    sizes = sorted(len(members) for members in by_label)
    quota, left = 0, max_queries
    for position, size in enumerate(sizes):
        share = left // (len(sizes) - position)
        if size > share:
            quota = share
            break
        left -= size
    else:
        quota = sizes[-1]
    chosen = [
        members if len(members) <= quota else members[np.linspace(0, len(members) - 1, quota).round().astype(int)]
        for members in by_label
    ]
    return np.sort(np.concatenate(chosen))


def loo_matches(
    vectors: np.ndarray,
    labels: Sequence[str],
    hashes: Sequence[str],
    *,
    max_queries: int = MAX_QUERIES,
) -> LooMatches:
    """The known-kind and unknown-kind top-1 match of each picture (see the module docstring).

    An exhaustive inner product (what the build's IndexFlatIP computes) in blocks: one product
    gives both the best match outside the picture's own bytes and the best outside its label,
    which a top-k index search could only give with k as large as the biggest label."""
    if len(vectors) != len(labels) or len(vectors) != len(hashes):
        raise ValueError(f"{len(vectors)} vectors, {len(labels)} labels and {len(hashes)} hashes do not match")
    normalised = _normalised(vectors)
    label_names, label_codes = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
    _, hash_codes = np.unique(np.asarray(hashes, dtype=object).astype(str), return_inverse=True)
    queries = _query_rows(label_codes, hash_codes, max_queries)
    predicted: list[int] = []
    scores: list[float] = []
    correct: list[bool] = []
    open_set: list[bool] = []
    block = max(1, _BLOCK_ELEMENTS // max(1, len(normalised)))
    for start in range(0, len(queries), block):
        rows = queries[start : start + block]
        similarity = normalised[rows] @ normalised.T
        same_picture = hash_codes[None, :] == hash_codes[rows][:, None]
        same_label = label_codes[None, :] == label_codes[rows][:, None]
        for mask, is_open in ((same_picture, False), (same_picture | same_label, True)):
            masked = np.where(mask, -np.inf, similarity)
            best = masked.argmax(axis=1)
            best_scores = masked[np.arange(len(rows)), best]
            found = np.isfinite(best_scores)
            predicted += label_codes[best[found]].tolist()
            scores += best_scores[found].astype(np.float64).tolist()
            correct += (label_codes[best[found]] == label_codes[rows[found]]).tolist()
            open_set += [is_open] * int(found.sum())
    return LooMatches(
        predicted=[str(label_names[code]) for code in predicted],
        scores=np.asarray(scores, dtype=np.float64),
        correct=np.asarray(correct, dtype=bool),
        open_set=np.asarray(open_set, dtype=bool),
        queries=len(queries),
    )


def _accepted_totals(
    thresholds: np.ndarray, scores: np.ndarray, right: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(weight of right matches, weight of all matches) with score >= each threshold."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    suffix_all = np.concatenate([np.cumsum(weights[order][::-1])[::-1], [0.0]])
    suffix_right = np.concatenate([np.cumsum((weights * right)[order][::-1])[::-1], [0.0]])
    first = np.searchsorted(sorted_scores, thresholds, side="left")
    return suffix_right[first], suffix_all[first]


def _smoothed(right: np.ndarray, total: np.ndarray, prior: np.ndarray | float, prior_weight: float) -> np.ndarray:
    prior = np.broadcast_to(np.asarray(prior, dtype=np.float64), right.shape)
    denominator = total + prior_weight
    with np.errstate(invalid="ignore", divide="ignore"):
        blended = (right + prior_weight * prior) / denominator
    return np.where(denominator > 0, blended, prior)


def _curve(thresholds: np.ndarray, precision: np.ndarray, *, target: float, max_knots: int) -> Curve:
    """Non-decreasing steps of at most `max_knots`, always keeping the step where the target is
    reached (dropping a step only lowers the confidence of the scores it covered)."""
    confidence = np.maximum.accumulate(precision)
    floor = 10.0**_CONFIDENCE_DECIMALS
    confidence = np.floor(confidence * floor + 1e-9) / floor  # never rounded up across the target
    starts = [i for i in range(len(confidence)) if i == 0 or confidence[i] > confidence[i - 1]]
    if len(starts) > max_knots:
        reaching = next((i for i in starts if confidence[i] >= target), None)
        picked = {starts[int(round(p))] for p in np.linspace(0, len(starts) - 1, max_knots - 1)}
        if reaching is not None:
            picked.add(reaching)
        starts = sorted(picked)
    scale = 10.0**_SCORE_DECIMALS
    steps: dict[float, float] = {}
    for i in starts:
        # Scores floored: a search result (rounded to 6 decimals) at a step's score clears it.
        steps[math.floor(thresholds[i] * scale) / scale] = float(confidence[i])
    return Curve.from_knots(sorted(steps.items()), target)


def calibrate(
    vectors: np.ndarray,
    labels: Sequence[str],
    hashes: Sequence[str],
    *,
    label_field: str,
    target_precision: float = DEFAULT_TARGET_PRECISION,
    prior_weight: float = PRIOR_WEIGHT,
    open_set_weight: float = OPEN_SET_WEIGHT,
    max_queries: int = MAX_QUERIES,
    max_knots: int = MAX_KNOTS,
) -> Calibration | None:
    """The calibration of a build from its vectors (one row per vector), each row's label and
    content hash. None when there is nothing to learn from: fewer than two labels (no wrong
    answer can be seen) or fewer than two pictures."""
    if not 0 < target_precision <= 1:
        raise ValueError(f"target precision {target_precision} is not in (0, 1]")
    if len(set(map(str, labels))) < 2 or len(set(hashes)) < 2:
        return None
    matches = loo_matches(vectors, labels, hashes, max_queries=max_queries)
    if not len(matches.scores):
        return None
    weights = np.where(matches.open_set, open_set_weight, 1.0)
    right, total = _accepted_totals(np.array([-np.inf]), matches.scores, matches.correct, weights)
    base = float(right[0] / total[0]) if total[0] > 0 else 0.0

    def pooled_at(thresholds: np.ndarray) -> np.ndarray:
        return _smoothed(*_accepted_totals(thresholds, matches.scores, matches.correct, weights), base, prior_weight)

    everywhere = np.unique(matches.scores)
    pooled = _curve(everywhere, pooled_at(everywhere), target=target_precision, max_knots=max_knots)
    predicted = np.asarray(matches.predicted, dtype=object)
    curves: dict[str, Curve] = {}
    counts: dict[str, dict[str, int]] = {}
    for label in sorted(set(matches.predicted)):
        mine = predicted == label
        # Steps only at this label's own match scores: between and below them there is no evidence
        # about this label, whatever other labels' matches say about those scores.
        own = np.unique(matches.scores[mine])
        label_right, label_total = _accepted_totals(own, matches.scores[mine], matches.correct[mine], weights[mine])
        precision = _smoothed(label_right, label_total, pooled_at(own), prior_weight)
        curves[label] = _curve(own, precision, target=target_precision, max_knots=max_knots)
        known = mine & ~matches.open_set
        counts[label] = {
            "matches": int(known.sum()),
            "correct": int((known & matches.correct).sum()),
            "open_set_matches": int((mine & matches.open_set).sum()),
        }
    known = ~matches.open_set
    return Calibration(
        label_field=label_field,
        target_precision=float(target_precision),
        pooled=pooled,
        curves=curves,
        counts=counts,
        summary={
            "queries": matches.queries,
            "known_matches": int(known.sum()),
            "loo_top1_accuracy": round(float(matches.correct[known].mean()), 4) if known.any() else None,
            "prior_weight": float(prior_weight),
            "open_set_weight": float(open_set_weight),
        },
    )


def calibrate_records(
    vectors: np.ndarray,
    records: Sequence[Mapping[str, Any]],
    *,
    engine: str,
    image_type: str,
    target_precision: float = DEFAULT_TARGET_PRECISION,
) -> Calibration | None:
    """`calibrate` for a build's vectors and their metadata records (label and content hash)."""
    field = label_field_for(engine=engine, image_type=image_type)
    usable = [i for i, record in enumerate(records) if record.get(field) is not None and record.get("sha256")]
    if len(usable) < 2:
        return None
    return calibrate(
        np.asarray(vectors)[usable],
        [str(records[i][field]) for i in usable],
        [str(records[i]["sha256"]) for i in usable],
        label_field=field,
        target_precision=target_precision,
    )


def calibrate_build(
    vectors: np.ndarray,
    records: Sequence[Mapping[str, Any]],
    *,
    engine: str,
    image_type: str,
    target_precision: float = DEFAULT_TARGET_PRECISION,
    region_descriptors: bytes | None = None,
) -> dict[str, Any]:
    """A build manifest's "calibration": one calibration per score space the build answers in
    (None where there is nothing to learn from). `region_descriptors`: the build's focus.npz."""
    whole = calibrate_records(vectors, records, engine=engine, image_type=image_type, target_precision=target_precision)
    calibrations = {MODE_WHOLE: whole.to_dict() if whole else None}
    if region_descriptors is not None:
        focus = FocusDescriptors.from_bytes(region_descriptors)
        by_id = {int(record["image_id"]): record for record in records}
        region = calibrate_records(
            focus.centred(focus.descriptors),  # as defect-focused search compares them
            [by_id[int(image_id)] for image_id in focus.ids],
            engine=engine,
            image_type=image_type,
            target_precision=target_precision,
        )
        calibrations[MODE_DEFECT_REGION] = region.to_dict() if region else None
    return calibrations
