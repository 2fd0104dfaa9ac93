"""Catalog adaptation, the Django-free core (indexing/adaptation.py)."""

from __future__ import annotations

import numpy as np
import pytest

from indexing.adaptation import Projection, _copies_find_themselves, fit_adaptation, fit_discriminant


def catalog(n: int = 600, dim: int = 64, *, defect_weight: float = 0.25, seed: int = 0):  # type: ignore[no-untyped-def]
    """Embeddings dominated by the product, with a weaker defect-type direction: what a whole-photo
    embedding of a small defect on a part looks like."""
    rng = np.random.default_rng(seed)
    products, defects = rng.normal(size=(4, dim)), rng.normal(size=(5, dim))
    p, k = rng.integers(0, 4, n), rng.integers(0, 5, n)
    x = products[p] + defect_weight * defects[k] + 0.8 * rng.normal(size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), [f"defect-{v}" for v in k], [f"sha-{i}" for i in range(n)]


def top1(vectors: np.ndarray, labels: list[str]) -> float:
    """Leave-one-out top-1 label accuracy by brute force (the reference, not FAISS)."""
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    return float(np.mean(np.asarray(labels)[sims.argmax(axis=1)] == np.asarray(labels)))


def test_a_projection_learnt_from_the_labels_is_kept_when_it_helps_on_held_out_pictures() -> None:
    x, labels, hashes = catalog()
    result = fit_adaptation(x, labels, hashes)
    assert result.projection is not None, result.reason
    assert result.adapted_top1 > result.base_top1 and result.reason.startswith("kept")
    assert result.holdout_pictures == len(x)  # every picture held out once (5 folds)
    adapted = result.projection.apply(x)
    assert adapted.shape == (len(x), 64 + 4) and np.allclose(np.linalg.norm(adapted, axis=1), 1, atol=1e-5)
    # Independently of the held-out figure: label neighbours are far more often right.
    assert top1(adapted, labels) > top1(x, labels) + 0.1
    # An exact copy of a catalog image still finds that image first.
    query = result.projection.apply(x[17])
    assert int(np.argmax(adapted @ query[0])) == 17


def test_labels_that_say_nothing_are_not_kept_and_the_build_is_told_why() -> None:
    x, _, hashes = catalog()
    for seed in range(5):
        noise = [f"label-{v}" for v in np.random.default_rng(seed).integers(0, 5, len(x))]
        result = fit_adaptation(x, noise, hashes)
        assert result.projection is None and result.reason.startswith("not kept"), result.reason
        assert "within chance" in result.reason and result.base_top1 is not None


def test_one_label_is_not_enough() -> None:
    x, _, hashes = catalog(n=50)
    result = fit_adaptation(x, ["scratch"] * 50, hashes)
    assert result.projection is None and "at least 2 labels" in result.reason


def test_copies_of_one_picture_stay_on_one_side_of_the_split() -> None:
    x, labels, _ = catalog(n=200)
    hashes = [f"sha-{i // 2}" for i in range(200)]  # every picture catalogued twice
    x[1::2] = x[0::2]
    labels[1::2] = labels[0::2]
    result = fit_adaptation(x, labels, hashes)
    # A copy on the other side would find itself: the held-out figure would be 1.0.
    assert result.base_top1 < 0.9


def test_the_copy_check_fails_when_the_projection_drowns_the_embedding() -> None:
    x, labels, hashes = catalog(n=300)
    fitted = fit_discriminant(x, np.asarray(labels))
    assert _copies_find_themselves(Projection(fitted.matrix, fitted.mean, alpha=1.0), x, hashes, 300)
    one = fitted.matrix[:, :1]  # one discriminant coordinate left: images collapse onto two directions
    assert not _copies_find_themselves(Projection(one, fitted.mean, alpha=1e6), x, hashes, 300)


def test_projection_round_trip() -> None:
    x, labels, hashes = catalog(n=200)
    projection = fit_adaptation(x, labels, hashes).projection
    again = Projection.from_bytes(projection.to_bytes())
    assert again.alpha == projection.alpha and np.array_equal(again.apply(x), projection.apply(x))
    with pytest.raises(ValueError):
        Projection.from_bytes(b"not a projection")
