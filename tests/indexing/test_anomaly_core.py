"""The Django-free anomaly core (indexing/anomaly.py): small photos, untrained weights."""

from __future__ import annotations

import io
import math
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from indexing import anomaly as anomaly_module
from indexing.anomaly import (
    AnomalyModel,
    IncompatibleAnomalyModel,
    PatchFeatureExtractor,
    anomaly_map_pixels,
    anomaly_map_png16,
    auroc,
    colorize,
    fit_anomaly_model,
    greedy_coreset,
    heatmap_pixels,
    heatmap_png,
    overlay_png,
    photo_size,
    result_pngs,
    score,
)
from indexing.embedder import WeightsUnavailable
from tests.helpers import surface_defect_mask, surface_photo

ROOT = Path(__file__).resolve().parents[2]
INPUT_SIZE = 128
PHOTO_SIZE = (160, 128)  # width, height: not square, so the map must be resized to the photo
NORMAL_IDS = [11, 12, 13, 14, 15, 16]  # catalog ids of the six training normals


def part_photo(seed: int, *, defect: bool = False) -> tuple[bytes, np.ndarray]:
    """A striped, slightly varying surface; with `defect`, a dark disc. (photo, mask)."""
    mask = surface_defect_mask(PHOTO_SIZE) if defect else np.zeros(PHOTO_SIZE[::-1], dtype=bool)
    return surface_photo(seed, defect=defect, size=PHOTO_SIZE), mask


@pytest.fixture(scope="module")
def extractor() -> PatchFeatureExtractor:
    return PatchFeatureExtractor(input_size=INPUT_SIZE)


@pytest.fixture(scope="module")
def normals(extractor: PatchFeatureExtractor) -> np.ndarray:
    return extractor.extract([part_photo(seed)[0] for seed in range(6)])


@pytest.fixture(scope="module")
def model(extractor: PatchFeatureExtractor, normals: np.ndarray) -> AnomalyModel:
    return fit_anomaly_model(
        normals, feature_fingerprint=extractor.fingerprint, input_size=INPUT_SIZE, normal_ids=NORMAL_IDS
    )


def test_auroc_matches_hand_computed_values() -> None:
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auroc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    # positive/negative pairs: 0.8>0.4, 0.8>0.1, 0.4=0.4 (one half), 0.4>0.1 -> 3.5 of 4
    assert auroc([1, 0, 1, 0], [0.8, 0.4, 0.4, 0.1]) == 0.875
    assert auroc([1, 0, 0, 1, 0], [2, 2, 2, 2, 2]) == 0.5
    # 3 of 6 pairs above, 2 tied: (3 + 1) / 6
    assert auroc([1, 1, 0, 0, 0], [5, 3, 3, 1, 5]) == pytest.approx(4 / 6)
    rng = np.random.default_rng(0)
    labels, scores = rng.integers(0, 2, 300).astype(bool), rng.integers(0, 8, 300)  # many ties
    pairs = scores[labels][:, None] - scores[~labels][None, :]
    assert auroc(labels, scores) == pytest.approx(((pairs > 0).sum() + 0.5 * (pairs == 0).sum()) / pairs.size)
    with pytest.raises(ValueError):
        auroc([1, 1], [0.2, 0.3])


def test_a_defect_scores_above_the_normals_and_its_map_peaks_inside_the_defect(
    extractor: PatchFeatureExtractor, model: AnomalyModel
) -> None:
    held_out = [part_photo(seed)[0] for seed in (100, 101, 102)]
    defect_photo, mask = part_photo(103, defect=True)
    features = extractor.extract([*held_out, defect_photo])
    normal_scores = [score(model, f, size=PHOTO_SIZE).score for f in features[:3]]
    result = score(model, features[3], size=photo_size(defect_photo))

    assert result.anomaly_map.shape == mask.shape
    assert result.score > max(normal_scores)
    assert result.is_anomalous and result.score > result.threshold
    peak_y, peak_x = np.unravel_index(np.argmax(result.anomaly_map), mask.shape)
    assert mask[peak_y, peak_x], (peak_x, peak_y)
    # Inside the defect the map is well above its level elsewhere, not just at one pixel.
    assert result.anomaly_map[mask].mean() > 1.5 * result.anomaly_map[~mask].mean()
    assert result.nearest_normal_id in NORMAL_IDS and result.peak_normal_id in NORMAL_IDS


def test_serialization_round_trip_preserves_scores_exactly(
    extractor: PatchFeatureExtractor, model: AnomalyModel, normals: np.ndarray
) -> None:
    data = model.to_bytes()
    restored = AnomalyModel.from_bytes(data)
    query = extractor.extract([part_photo(7, defect=True)[0]])[0]
    before, after = score(model, query, size=PHOTO_SIZE), score(restored, query, size=PHOTO_SIZE)

    assert after.score == before.score
    assert np.array_equal(after.anomaly_map, before.anomaly_map)
    assert (after.nearest_normal_id, after.peak_normal_id) == (before.nearest_normal_id, before.peak_normal_id)
    for name in ("threshold", "map_scale", "grid_shape", "input_size", "feature_fingerprint", "normal_count"):
        assert getattr(restored, name) == getattr(model, name), name
    for name in ("features", "sources", "descriptors", "calibration_scores", "normal_ids"):
        assert np.array_equal(getattr(restored, name), getattr(model, name), equal_nan=True), name
    assert restored.features.dtype == np.float16
    # Fitting is deterministic: the same normals give the same file.
    again = fit_anomaly_model(
        normals, feature_fingerprint=extractor.fingerprint, input_size=INPUT_SIZE, normal_ids=NORMAL_IDS
    )
    assert again.to_bytes() == data
    with pytest.raises(ValueError):
        AnomalyModel.from_bytes(b"not an npz file")


def _textbook_greedy(points: np.ndarray, count: int, first: int) -> list[int]:
    chosen = [first]
    nearest = ((points - points[first]) ** 2).sum(axis=1)
    while len(chosen) < count:
        chosen.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, ((points - points[chosen[-1]]) ** 2).sum(axis=1))
    return sorted(chosen)


def test_coreset_keeps_the_requested_count_of_input_rows(
    extractor: PatchFeatureExtractor, model: AnomalyModel, normals: np.ndarray
) -> None:
    rng = np.random.default_rng(3)
    clusters = rng.normal(size=(30, 1, 8)) * 4 + rng.normal(size=(30, 100, 8))
    points = clusters.reshape(-1, 8).astype(np.float32)  # 8-d: no projection, exact distances
    chosen = greedy_coreset(points, 250, seed=5, active_size=256)
    assert len(chosen) == 250 == len(set(chosen.tolist()))
    assert chosen.min() >= 0 and chosen.max() < len(points)
    # The phased computation makes the same picks as the plain farthest-point loop.
    first = int(np.random.default_rng(5).integers(len(points)))
    assert chosen.tolist() == _textbook_greedy(points.astype(np.float64), 250, first)

    patches = normals.reshape(-1, normals.shape[-1])
    assert len(model.features) == math.ceil(0.1 * len(patches))
    as_stored = patches.astype(np.float16)
    for row, source in zip(model.features, model.sources, strict=True):
        own = as_stored[source * 16 * 16 : (source + 1) * 16 * 16]  # the patches of the image it names
        assert (own == row).all(axis=1).any()
    capped = fit_anomaly_model(
        normals, feature_fingerprint=extractor.fingerprint, input_size=INPUT_SIZE, coreset_ratio=0.5, max_bank_size=40
    )
    assert len(capped.features) == 40


def test_fingerprint_is_stable_for_untrained_weights_and_names_a_checkpoint(
    extractor: PatchFeatureExtractor, tmp_path: Path
) -> None:
    photo = part_photo(1)[0]
    torch.manual_seed(1234)  # whatever ran before in the process must not change the network
    torch.rand(100)
    second = PatchFeatureExtractor(input_size=INPUT_SIZE)
    assert second.fingerprint == extractor.fingerprint and second.is_untrained
    assert np.array_equal(second.extract([photo]), extractor.extract([photo]))
    other_process = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from indexing.anomaly import PatchFeatureExtractor as E; print(E(input_size={INPUT_SIZE}).fingerprint)",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert other_process.stdout.strip() == extractor.fingerprint
    assert PatchFeatureExtractor(input_size=INPUT_SIZE + 16).fingerprint != extractor.fingerprint

    torch.manual_seed(99)
    checkpoint = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), checkpoint)
    trained = PatchFeatureExtractor(weights=str(checkpoint), input_size=INPUT_SIZE)
    assert not trained.is_untrained
    assert trained.fingerprint != extractor.fingerprint
    assert not np.array_equal(trained.extract([photo]), extractor.extract([photo]))
    torch.manual_seed(98)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), checkpoint)
    assert PatchFeatureExtractor(weights=str(checkpoint), input_size=INPUT_SIZE).fingerprint != trained.fingerprint

    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    for bad in (tmp_path / "wrong.pth", tmp_path / "missing.pth"):
        with pytest.raises(WeightsUnavailable):
            PatchFeatureExtractor(weights=str(bad), input_size=INPUT_SIZE)


@pytest.mark.parametrize("feature_dim", [192, 100])
def test_features_keep_feature_dim_channels_averaged_over_adjacent_ones(feature_dim: int) -> None:
    # 384 channels (layer2 + layer3) into 192: pairs, a plain mean; into 100: adaptive pooling's
    # uneven, overlapping bins. Either way what adaptive_avg_pool1d computes.
    photos = [part_photo(seed)[0] for seed in (30, 31)]
    full = PatchFeatureExtractor(input_size=INPUT_SIZE, feature_dim=None).extract(photos)
    reduced = PatchFeatureExtractor(input_size=INPUT_SIZE, feature_dim=feature_dim).extract(photos)
    expected = torch.nn.functional.adaptive_avg_pool1d(torch.from_numpy(full).reshape(-1, 1, 384), feature_dim)
    assert reduced.shape == (*full.shape[:3], feature_dim)
    assert np.allclose(reduced, expected.reshape(reduced.shape).numpy(), atol=1e-5)


def test_bfloat16_features_stay_within_a_percent_of_float32_under_the_same_fingerprint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    photos = [part_photo(seed, defect=seed == 33)[0] for seed in (32, 33)]
    exact = PatchFeatureExtractor(input_size=INPUT_SIZE, precision="float32")
    fast = PatchFeatureExtractor(input_size=INPUT_SIZE, precision="bfloat16")
    assert (exact.precision, fast.precision) == ("float32", "bfloat16")
    assert fast.fingerprint == exact.fingerprint  # models fitted on either kind of host serve on both
    reference, features = exact.extract(photos), fast.extract(photos)
    assert not np.array_equal(features, reference)  # really computed in bfloat16
    assert np.abs(features - reference).mean() / np.abs(reference).mean() < 0.01

    for native, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(anomaly_module, "bfloat16_is_fast", lambda native=native: native)
        assert PatchFeatureExtractor(input_size=INPUT_SIZE).precision == expected
    with pytest.raises(ValueError, match="precision"):
        PatchFeatureExtractor(input_size=INPUT_SIZE, precision="float16")


def test_raw_map_png_is_16_bit_at_the_photo_size_with_the_documented_scale(
    extractor: PatchFeatureExtractor, model: AnomalyModel
) -> None:
    photo, _ = part_photo(8, defect=True)
    result = score(model, extractor.extract([photo])[0], size=photo_size(photo))
    with Image.open(io.BytesIO(anomaly_map_png16(result.anomaly_map, model.map_scale))) as img:
        assert img.format == "PNG" and img.mode == "I;16" and img.size == PHOTO_SIZE
        pixels = np.asarray(img)
    expected = np.round(np.clip(result.anomaly_map / model.map_scale, 0, 1) * 65535)
    assert np.abs(pixels.astype(np.int64) - expected).max() <= 1
    assert model.map_scale == 2 * model.threshold

    known = np.array([[0.0, 1.0, 2.0, 4.0, -1.0]], dtype=np.float32)
    with Image.open(io.BytesIO(anomaly_map_png16(known, 2.0))) as img:
        assert np.asarray(img).tolist() == [[0, 32768, 65535, 65535, 0]]
    with Image.open(io.BytesIO(anomaly_map_png16(known, 2.0, size=(10, 4)))) as img:
        assert img.size == (10, 4)

    with Image.open(io.BytesIO(heatmap_png(result.anomaly_map, model.map_scale))) as img:
        assert img.mode == "RGB" and img.size == PHOTO_SIZE
    with Image.open(io.BytesIO(overlay_png(photo, result.anomaly_map, model.map_scale, max_side=80))) as img:
        assert img.mode == "RGB" and img.size == (80, 64)


def test_colorize_looks_up_the_colour_map_within_one_level_of_interpolating_it() -> None:
    values = np.linspace(-0.5, 2.5, 30_000, dtype=np.float32).reshape(3, -1)  # beyond both ends too
    stops = anomaly_module._COLORMAP_STOPS
    clipped = np.clip(values / 2.0, 0.0, 1.0)
    exact = np.stack([np.interp(clipped, stops[:, 0], stops[:, c]) for c in (1, 2, 3)], axis=-1) * 255.0
    colours = colorize(values, 2.0)
    assert colours.dtype == np.uint8 and colours.shape == (*values.shape, 3)
    assert np.abs(colours.astype(np.float64) - exact).max() <= 1.0
    assert colours[0, 0].tolist() == [0, 0, 128] and colours[-1, -1].tolist() == [128, 0, 0]


def test_a_checks_three_files_are_drawn_from_the_models_map_at_the_photos_size_and_aspect(
    extractor: PatchFeatureExtractor, model: AnomalyModel
) -> None:
    photo, _ = part_photo(9, defect=True)
    features = extractor.extract([photo])[0]
    result = score(model, features)  # the map at the model's input size, as the check service scores
    assert result.anomaly_map.shape == (INPUT_SIZE, INPUT_SIZE) != PHOTO_SIZE[::-1]
    files = result_pngs(photo, result.anomaly_map, model.map_scale)
    assert sorted(files) == ["anomaly_map.png", "heatmap.png", "overlay.png"]

    def pixels(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img)

    at_photo_size = score(model, features, size=PHOTO_SIZE).anomaly_map
    assert np.array_equal(pixels(files["anomaly_map.png"]), anomaly_map_pixels(at_photo_size, model.map_scale))
    heatmap = pixels(files["heatmap.png"])
    assert heatmap.shape == (*PHOTO_SIZE[::-1], 3)
    assert np.array_equal(heatmap, heatmap_pixels(result.anomaly_map, model.map_scale, size=PHOTO_SIZE))
    assert files["overlay.png"] == overlay_png(photo, result.anomaly_map, model.map_scale)


def _blob_and_outliers(rng: np.random.Generator, blob: int, outliers: np.ndarray) -> np.ndarray:
    """`blob` near-identical rows (a plain background) and the given outliers, each jittered a
    little: a graph index (HNSW) links the blob's rows to each other and fails to find the
    outliers' neighbours from it."""
    rows = np.concatenate([np.zeros((blob, outliers.shape[1])), outliers])
    return (rows + 0.01 * rng.normal(size=rows.shape)).astype(np.float32)


def test_scoring_finds_the_exact_nearest_patch_even_where_a_graph_search_gets_lost(
    extractor: PatchFeatureExtractor, normals: np.ndarray
) -> None:
    # Every patch kept (1,536 rows), and real features.
    model = fit_anomaly_model(
        normals, feature_fingerprint=extractor.fingerprint, input_size=INPUT_SIZE, coreset_ratio=1.0
    )
    bank = model.features.astype(np.float32)
    for seed in (20, 21):
        features = extractor.extract([part_photo(seed, defect=seed == 21)[0]])[0]
        squared, _ = faiss.knn(features.reshape(-1, model.dim), bank, 1)  # brute force
        result = score(model, features)
        assert np.allclose(result.patch_scores.ravel(), np.sqrt(np.maximum(squared[:, 0], 0)), rtol=1e-4, atol=1e-4)

    # A bank of a plain background and 100 distinctive patches (edges, teeth) far from it: the
    # kind of bank where an HNSW graph (M 16, efConstruction 40, efSearch 64) missed the nearest
    # patch of more than one distinctive query in ten, and the image score is the worst patch.
    rng = np.random.default_rng(7)
    outliers = 3.0 * rng.normal(size=(100, 64))
    bank = _blob_and_outliers(rng, 3000, outliers)
    hard = AnomalyModel(
        features=bank.astype(np.float16),
        sources=np.zeros(len(bank), dtype=np.int32),
        descriptors=np.zeros((2, 64), dtype=np.float16),
        calibration_scores=np.zeros(2, dtype=np.float32),
        normal_ids=np.arange(2),
        threshold=1.0,
        map_scale=2.0,
        grid_shape=(10, 10),
        input_size=40,
        feature_fingerprint="test",
        normal_count=2,
    )
    queries = (outliers + 0.01 * rng.normal(size=outliers.shape)).astype(np.float32)
    squared, _ = faiss.knn(queries, bank.astype(np.float16).astype(np.float32), 1)
    result = score(hard, queries.reshape(10, 10, 64))
    assert np.allclose(result.patch_scores.ravel(), np.sqrt(np.maximum(squared[:, 0], 0)), rtol=1e-4, atol=1e-4)


def test_calibration_keeps_every_training_normal_at_or_below_the_threshold(
    model: AnomalyModel, normals: np.ndarray
) -> None:
    assert model.normal_count == len(normals)
    assert not np.isnan(model.calibration_scores).any()
    assert model.threshold == pytest.approx(float(model.calibration_scores.max()))
    for features, left_out, image_id in zip(normals, model.calibration_scores, NORMAL_IDS, strict=True):
        served = score(model, features)
        assert served.score <= left_out + 1e-5
        assert not served.is_anomalous
        assert served.nearest_normal_id == image_id  # a training normal is most similar to itself
    assert score(model, normals[0], threshold=0.0).is_anomalous  # an override changes the verdict only
    assert score(model, normals[0], threshold=0.0).map_scale == model.map_scale


def test_features_from_another_configuration_are_refused(
    model: AnomalyModel, normals: np.ndarray, extractor: PatchFeatureExtractor
) -> None:
    with pytest.raises(IncompatibleAnomalyModel):
        score(model, normals[0][:8])
    with pytest.raises(IncompatibleAnomalyModel):
        score(model, normals[0][..., :64])
    model.require_fingerprint(extractor.fingerprint)
    with pytest.raises(IncompatibleAnomalyModel):
        model.require_fingerprint("0" * 32)


def _exact_leave_one_out(model: AnomalyModel, stack: np.ndarray, input_size: int) -> np.ndarray:
    """Brute-force numpy reference: each image's patches against the other images' bank rows."""
    from indexing.anomaly import smooth_map

    bank = model.features.astype(np.float64)
    n, h, w, dim = stack.shape
    scores = []
    for i in range(n):
        others = bank[model.sources != i]
        queries = stack[i].reshape(h * w, dim).astype(np.float64)
        squared = (queries**2).sum(1)[:, None] - 2 * queries @ others.T + (others**2).sum(1)[None, :]
        distances = np.sqrt(np.maximum(squared.min(axis=1), 0)).reshape(h, w)
        scores.append(smooth_map(distances, input_size=input_size).max())
    return np.array(scores)


def test_leave_one_out_scores_are_an_exact_search_without_the_image(model: AnomalyModel, normals: np.ndarray) -> None:
    assert np.allclose(model.calibration_scores, _exact_leave_one_out(model, normals, INPUT_SIZE), rtol=1e-4, atol=1e-4)

    # Four images of a plain background with distinctive patches, each also seen in one other
    # image: a graph search that excludes the image's own rows got lost in the background and
    # raised the threshold many times over (it tripled the benchmark's gear's).
    rng = np.random.default_rng(8)
    outliers = 3.0 * rng.normal(size=(200, 64))
    stack = np.stack(
        [
            _blob_and_outliers(
                rng, 700, outliers[[*range(i * 50, i * 50 + 50), *range((i + 1) % 4 * 50, (i + 1) % 4 * 50 + 50)]]
            )
            for i in range(4)
        ]
    )
    stack = stack.reshape(4, 20, 40, 64)
    hard = fit_anomaly_model(stack, feature_fingerprint="test", input_size=40, coreset_ratio=1.0)
    exact = _exact_leave_one_out(hard, stack, 40)
    assert np.allclose(hard.calibration_scores, exact, rtol=1e-4, atol=1e-4)
    assert hard.threshold == pytest.approx(exact.max(), rel=1e-4)


def test_the_fused_channels_last_trunk_gives_the_plain_resnet_layers(extractor: PatchFeatureExtractor) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        resnet = torchvision.models.resnet18(weights=None).eval()
    batch = torch.rand(2, 3, INPUT_SIZE, INPUT_SIZE)
    with torch.inference_mode():
        stem = torch.nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1)
        f2 = resnet.layer2(stem(batch))
        f3 = resnet.layer3(f2)
        fused2, fused3 = extractor.trunk(batch.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(fused2, f2, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(fused3, f3, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("grid", [(32, 32), (28, 20), (4, 4)])
def test_smooth_map_is_bilinear_upsampling_then_a_reflected_gaussian(grid):
    """The separable matrix form gives what the 2-D operations give, borders included."""
    from indexing.anomaly import GAUSSIAN_SIGMA, smooth_map

    patch_scores = np.random.default_rng(3).gamma(2.0, 1.0, size=grid).astype(np.float32)
    up = torch.nn.functional.interpolate(
        torch.from_numpy(patch_scores)[None, None], size=(96, 96), mode="bilinear", align_corners=False
    )
    radius = math.ceil(4 * GAUSSIAN_SIGMA)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * GAUSSIAN_SIGMA**2))
    kernel /= kernel.sum()
    up = torch.nn.functional.pad(up, (radius,) * 4, mode="reflect")
    expected = torch.nn.functional.conv2d(up, (kernel[:, None] * kernel[None, :])[None, None])[0, 0].numpy()
    smoothed = smooth_map(patch_scores, input_size=96)
    assert smoothed.shape == (96, 96) and smoothed.dtype == np.float32
    np.testing.assert_allclose(smoothed, expected, rtol=1e-5, atol=1e-5)


def test_bfloat16_counts_as_fast_on_amx_or_avx512_bf16_cpus_only(monkeypatch):
    """AMX (Intel Sapphire Rapids on) and AVX512-BF16 (AMD Zen 4) compute bfloat16 natively;
    elsewhere oneDNN emulates it, slower than float32."""
    for amx, avx512_bf16, expected in ((True, False, True), (False, True, True), (False, False, False)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        assert anomaly_module.bfloat16_is_fast() is expected
