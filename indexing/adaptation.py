"""Catalog adaptation: a projection of the embeddings learnt from the catalog's own labels.
Django-free.

The catalog is a labelled dataset: every defect image has a defect type, every image a product.
`fit_adaptation` learns, on the build's embeddings, a linear map that pulls images of one label
together and pushes labels apart (Fisher's linear discriminant: the directions that maximise
between-label scatter against within-label scatter, with the within-label scatter shrunk towards
the identity so that a few hundred images in 512 dimensions still give a stable answer).

The adapted vector of x is the unit vector of [x, alpha * P(x - mean)]: the original embedding
with the discriminant coordinates appended. Keeping x means an exact copy of a catalog image
still scores 1.0 against it (nothing else can, unless it has the same embedding), and text
queries, which CLIP embeds in the same space, go through the same map. `alpha` weighs the
labels against the original similarity.

Whether to keep it is decided on held-out pictures, never on the images it was fitted on: the
pictures (content hashes, so copies stay together) are split per label into FOLDS folds,
seeded; for each fold the projection is fitted on the others, and every picture of the fold is
searched against them (FAISS, cosine) with the plain embedding and with each alpha. Every
picture is held out once, so the top-1 label accuracies count the whole catalog, not a fifth of
it. It is kept only when the best alpha beats the plain embedding by more than chance would
(McNemar: of the held-out pictures that exactly one of the two gets right, the adapted search
must win by more than 3 standard deviations, sqrt(of those): 4 alphas are tried), and every
exact copy of a catalog image still finds it first; the final projection is then fitted on all
images with that alpha. Otherwise the build says why not, and serves the plain embeddings."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np

from indexing import vector_index

ALPHAS = (0.5, 1.0, 2.0, 4.0)
SHRINKAGE = 0.1  # within-label scatter := (1 - s) * S_w + s * trace(S_w) / d * I
FOLDS = 5
MIN_PER_LABEL = 2  # a label needs this many pictures to take part (one held out, one to find)
SIGNIFICANCE = 3.0  # standard deviations the held-out gain must exceed (4 alphas are tried)
PROJECTION_FILE = "projection.npz"
PROJECTION_FORMAT = "simsearch-projection-v1"


@dataclass(frozen=True, eq=False)
class Projection:
    """x -> unit([x, alpha * (x - mean) @ matrix]). Serialise with to_bytes (.npz, no pickle)."""

    matrix: np.ndarray  # float32 [dim, k]
    mean: np.ndarray  # float32 [dim]
    alpha: float

    @property
    def input_dim(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def output_dim(self) -> int:
        return int(self.matrix.shape[0] + self.matrix.shape[1])

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        x = np.asarray(vectors, dtype=np.float32).reshape(-1, self.input_dim)
        out = np.ascontiguousarray(np.hstack([x, self.alpha * ((x - self.mean) @ self.matrix)]), dtype=np.float32)
        faiss.normalize_L2(out)
        return out

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        meta = {"format": PROJECTION_FORMAT, "alpha": self.alpha}
        np.savez(
            buffer,
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            matrix=self.matrix,
            mean=self.mean,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Projection:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                meta = json.loads(archive["meta"].tobytes())
                matrix, mean = archive["matrix"].astype(np.float32), archive["mean"].astype(np.float32)
        except Exception as exc:
            raise ValueError(f"not a projection file: {exc}") from exc
        if meta.get("format") != PROJECTION_FORMAT or matrix.ndim != 2 or mean.shape != (matrix.shape[0],):
            raise ValueError("not a projection file of this version")
        return cls(matrix=matrix, mean=mean, alpha=float(meta["alpha"]))


@dataclass
class AdaptationResult:
    projection: Projection | None  # None: not kept (see reason)
    reason: str  # why it was kept or not, for the build page
    base_top1: float | None  # held-out top-1 label accuracy, plain embeddings
    adapted_top1: float | None  # the same with the chosen alpha
    alpha: float | None
    labels: int
    train_pictures: int
    holdout_pictures: int
    seconds: float
    by_alpha: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "kept": self.projection is not None,
            "reason": self.reason,
            "base_top1": self.base_top1,
            "adapted_top1": self.adapted_top1,
            "alpha": self.alpha,
            "by_alpha": self.by_alpha,
            "labels": self.labels,
            "train_pictures": self.train_pictures,
            "holdout_pictures": self.holdout_pictures,
            "dims": self.projection.output_dim if self.projection is not None else None,
            "seconds": round(self.seconds, 3),
        }


def fit_discriminant(vectors: np.ndarray, labels: np.ndarray, *, shrinkage: float = SHRINKAGE) -> Projection:
    """Fisher discriminant directions (at most labels - 1), scaled so the within-label spread
    along each is 1, with alpha 1."""
    x = np.asarray(vectors, dtype=np.float64)
    mean = x.mean(axis=0)
    classes = np.unique(labels)
    dim = x.shape[1]
    within = np.zeros((dim, dim))
    between = np.zeros((dim, dim))
    for label in classes:
        members = x[labels == label]
        centre = members.mean(axis=0)
        centred = members - centre
        within += centred.T @ centred
        offset = (centre - mean)[:, None]
        between += len(members) * (offset @ offset.T)
    within /= len(x)
    between /= len(x)
    within = (1 - shrinkage) * within + shrinkage * (np.trace(within) / dim + 1e-12) * np.eye(dim)
    # Whiten the within-label scatter, then the between-label scatter's main axes.
    values, vectors_w = np.linalg.eigh(within)
    whitening = vectors_w / np.sqrt(np.maximum(values, 1e-12))
    b = whitening.T @ between @ whitening
    b_values, b_vectors = np.linalg.eigh(b)
    keep = min(len(classes) - 1, dim)
    order = np.argsort(b_values)[::-1][:keep]
    matrix = whitening @ b_vectors[:, order]
    # Scale to the size of the original unit vectors: the discriminant coordinates of an image
    # then weigh about as much as its embedding when alpha is 1.
    spread = np.sqrt(np.mean(np.sum(((x - mean) @ matrix) ** 2, axis=1))) + 1e-12
    return Projection(matrix=(matrix / spread).astype(np.float32), mean=mean.astype(np.float32), alpha=1.0)


def _top1_correct(
    gallery: np.ndarray, gallery_labels: np.ndarray, queries: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """For each query, whether its nearest gallery vector (FAISS, cosine) has its label."""
    index = vector_index.build_index(gallery, np.arange(len(gallery), dtype=np.int64))
    q = np.ascontiguousarray(queries, dtype=np.float32)
    faiss.normalize_L2(q)
    _, rows = index.search(q, 1)
    return gallery_labels[rows[:, 0]] == labels


def _folds(labels: np.ndarray, hashes: np.ndarray, seed: int) -> np.ndarray:
    """Fold number of each row: per label, its pictures (content hashes: copies stay together)
    dealt round-robin in a seeded order, so every label is in as many folds as it has pictures."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        pictures = np.unique(hashes[labels == label])
        rng.shuffle(pictures)
        for position, picture in enumerate(pictures):
            fold[(labels == label) & (hashes == picture)] = position % FOLDS
    return fold


def _copies_find_themselves(projection: Projection, vectors: np.ndarray, hashes: Sequence[str], sample: int) -> bool:
    """Searching with a catalog image's own embedding (what an exact copy of it embeds to) finds
    that picture first, for a seeded sample of the catalog; another picture first counts only if
    its embedding is the same."""
    adapted = projection.apply(vectors)
    index = vector_index.build_index(adapted, np.arange(len(adapted), dtype=np.int64))
    rows = np.random.default_rng(0).choice(len(adapted), size=min(sample, len(adapted)), replace=False)
    _, found = index.search(adapted[rows], 1)
    hashes = np.asarray(hashes)
    for row, best in zip(rows, found[:, 0], strict=True):
        if hashes[best] != hashes[row] and not np.array_equal(vectors[best], vectors[row]):
            return False
    return True


def fit_adaptation(
    vectors: np.ndarray,
    labels: Sequence[str],
    hashes: Sequence[str],
    *,
    seed: int = 0,
    alphas: Sequence[float] = ALPHAS,
    self_check_sample: int = 2000,
) -> AdaptationResult:
    """Fit, validate on a held-out split and decide (module docstring). `vectors`: the build's
    L2-normalised embeddings; `labels`: each row's label; `hashes`: each row's content sha256."""
    started = time.perf_counter()
    x = np.asarray(vectors, dtype=np.float32)
    labels_array = np.asarray(labels)
    counts = {label: len(set(np.asarray(hashes)[labels_array == label])) for label in np.unique(labels_array)}
    usable = np.isin(labels_array, [label for label, n in counts.items() if n >= MIN_PER_LABEL])
    labelled = len([n for n in counts.values() if n >= MIN_PER_LABEL])

    def refused(reason: str, **figures: object) -> AdaptationResult:
        return AdaptationResult(
            projection=None,
            reason=reason,
            base_top1=figures.get("base_top1"),  # type: ignore[arg-type]
            adapted_top1=figures.get("adapted_top1"),  # type: ignore[arg-type]
            alpha=None,
            labels=labelled,
            train_pictures=int(figures.get("train", 0)),  # type: ignore[call-overload]
            holdout_pictures=int(figures.get("holdout", 0)),  # type: ignore[call-overload]
            seconds=time.perf_counter() - started,
            by_alpha=figures.get("by_alpha", {}),  # type: ignore[arg-type]
        )

    if labelled < 2:
        return refused(
            f"needs at least 2 labels with {MIN_PER_LABEL} or more pictures each; this catalog has {labelled}"
        )
    xu, lu, hu = x[usable], labels_array[usable], np.asarray(hashes)[usable]
    fold = _folds(lu, hu, seed)
    base_right = np.zeros(len(xu), dtype=bool)
    right = {alpha: np.zeros(len(xu), dtype=bool) for alpha in alphas}
    for k in np.unique(fold):
        test, train = fold == k, fold != k
        if len(np.unique(lu[train])) < 2:
            continue
        base_right[test] = _top1_correct(xu[train], lu[train], xu[test], lu[test])
        fitted = fit_discriminant(xu[train], lu[train])
        for alpha in alphas:
            candidate = Projection(matrix=fitted.matrix, mean=fitted.mean, alpha=alpha)
            right[alpha][test] = _top1_correct(
                candidate.apply(xu[train]), lu[train], candidate.apply(xu[test]), lu[test]
            )
    by_alpha = {f"{alpha:g}": round(float(right[alpha].mean()), 4) for alpha in alphas}
    best_alpha = max(alphas, key=lambda a: (right[a].sum(), -a))
    base, best = float(base_right.mean()), float(right[best_alpha].mean())
    wins = int(np.sum(right[best_alpha] & ~base_right))
    losses = int(np.sum(base_right & ~right[best_alpha]))
    pictures = len(set(hu))
    figures = {
        "base_top1": round(base, 4),
        "adapted_top1": round(best, 4),
        "by_alpha": by_alpha,
        "train": pictures,
        "holdout": pictures,
    }
    if wins - losses <= SIGNIFICANCE * np.sqrt(max(wins + losses, 1)):
        return refused(
            f"not kept: held-out top-1 {best:.3f} with adaptation against {base:.3f} without "
            f"({wins} pictures better, {losses} worse: within chance)",
            **figures,
        )
    final = fit_discriminant(xu, lu)
    projection = Projection(matrix=final.matrix, mean=final.mean, alpha=best_alpha)
    if not _copies_find_themselves(projection, x, hashes, self_check_sample):
        return refused("not kept: an exact copy of a catalog image no longer finds it first", **figures)
    return AdaptationResult(
        projection=projection,
        reason=f"kept: held-out top-1 {best:.3f} with adaptation against {base:.3f} without "
        f"({wins} pictures better, {losses} worse)",
        base_top1=round(base, 4),
        adapted_top1=round(best, 4),
        alpha=best_alpha,
        labels=labelled,
        train_pictures=pictures,
        holdout_pictures=pictures,
        seconds=time.perf_counter() - started,
        by_alpha=by_alpha,
    )
