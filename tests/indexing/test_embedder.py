"""The real open_clip code path, with the tiny shipped architecture and random weights."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from indexing.embedder import Embedder, ImageDecodeError, WeightsUnavailable, get_embedder
from tests.helpers import image_bytes

TINY = "simsearch-tiny"


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return get_embedder(model_name=TINY, pretrained="untrained")


def loaders(blobs: list[bytes]) -> list:
    return [lambda data=data: data for data in blobs]


def test_vectors_are_normalised_float32_in_input_order(embedder: Embedder) -> None:
    blobs = [image_bytes(seed=i, size=(90, 70)) for i in range(11)]
    encoded = embedder.encode_images(loaders(blobs), batch_size=4)
    assert encoded.vectors.dtype == np.float32 and encoded.vectors.shape == (11, embedder.dim)
    assert np.allclose(np.linalg.norm(encoded.vectors, axis=1), 1.0, atol=1e-5)
    assert encoded.present == list(range(11)) and encoded.missing == []
    # Order and batching do not change a vector: each equals the single-image query embedding.
    for i in (0, 5, 10):
        assert float(embedder.encode_image_bytes(blobs[i])[0] @ encoded.vectors[i]) == pytest.approx(1.0, abs=1e-5)
    assert float(encoded.vectors[0] @ encoded.vectors[1]) < 0.9999


def test_untrained_weights_are_reproducible_and_flagged() -> None:
    first = Embedder(model_name=TINY, pretrained="untrained")
    second = Embedder(model_name=TINY, pretrained="untrained")
    assert first.is_untrained and first.fingerprint == second.fingerprint
    data = image_bytes(seed=3)
    assert np.allclose(first.encode_image_bytes(data), second.encode_image_bytes(data), atol=1e-6)


def test_missing_files_are_reported_and_bad_bytes_raise_with_position(embedder: Embedder) -> None:
    def gone() -> bytes:
        raise FileNotFoundError("deleted")

    blobs = [image_bytes(seed=1), image_bytes(seed=2)]
    encoded = embedder.encode_images([loaders(blobs)[0], gone, loaders(blobs)[1]], batch_size=2)
    assert encoded.present == [0, 2] and encoded.missing == [1] and len(encoded.vectors) == 2
    with pytest.raises(ImageDecodeError) as caught:
        embedder.encode_images(loaders([blobs[0], b"garbage"]), batch_size=2)
    assert caught.value.index == 1


def test_progress_callback_counts_up_to_the_total(embedder: Embedder) -> None:
    seen: list[int] = []
    embedder.encode_images(loaders([image_bytes(seed=i) for i in range(10)]), batch_size=3, on_batch=seen.append)
    assert seen == sorted(seen) and seen[-1] == 10


def test_large_jpegs_decode_at_reduced_scale_with_nearly_the_same_embedding(embedder: Embedder) -> None:
    rng = np.random.default_rng(0)
    small = PILImage.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).resize((2048, 1536))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=92)
    big_jpeg = buffer.getvalue()
    png = io.BytesIO()
    small.save(png, format="PNG")  # PNG has no draft mode: decoded at full size
    draft, full = embedder.encode_image_bytes(big_jpeg)[0], embedder.encode_image_bytes(png.getvalue())[0]
    assert float(draft @ full) > 0.98


@pytest.mark.parametrize("size", [(512, 512), (2048, 1536), (300, 200)])
def test_jpegs_decode_at_the_smallest_dct_scale_that_still_covers_the_model_input(
    embedder: Embedder, size: tuple[int, int]
) -> None:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, (120, 80, 40)).save(buffer, format="JPEG")
    short_side = min(embedder.decode(buffer.getvalue()).size)
    scales = [min(size) // factor for factor in (1, 2, 4, 8) if min(size) // factor >= embedder.input_size]
    assert short_side == (min(scales) if scales else min(size))


def test_text_queries_embed_to_the_same_space(embedder: Embedder) -> None:
    vectors = embedder.encode_texts(["scratch on a metal surface", "a dent"])
    assert vectors.shape == (2, embedder.dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_local_checkpoint_file_loads_and_is_fingerprinted(tmp_path: Path, embedder: Embedder) -> None:
    checkpoint = tmp_path / "tiny.pt"
    torch.save(embedder.model.state_dict(), checkpoint)
    from_file = Embedder(model_name=TINY, pretrained=str(checkpoint))
    assert not from_file.is_untrained
    assert from_file.fingerprint != embedder.fingerprint
    data = image_bytes(seed=5)
    assert np.allclose(from_file.encode_image_bytes(data), embedder.encode_image_bytes(data), atol=1e-5)
    checkpoint.write_bytes(checkpoint.read_bytes()[:-10] + b"0123456789")  # same size, other weights identity
    assert Embedder(model_name=TINY, pretrained=str(checkpoint)).fingerprint != from_file.fingerprint


@pytest.mark.parametrize(
    ("model", "pretrained", "names"),
    [
        ("ViT-nope", "untrained", "SIMSEARCH_MODEL"),
        (TINY, "/srv/models/missing-checkpoint.pt", "SIMSEARCH_PRETRAINED"),
        ("ViT-B-32", "no-such-tag", "SIMSEARCH_PRETRAINED"),
        # HF_HUB_OFFLINE=1 in tests: the hub is unreachable, exactly as on an air-gapped server.
        ("ViT-B-32", "laion2b_s34b_b79k", "SIMSEARCH_PRETRAINED"),
    ],
    ids=["unknown-model", "missing-file", "unknown-tag", "hub-unreachable"],
)
def test_unloadable_weights_fail_loudly_naming_the_setting(model: str, pretrained: str, names: str) -> None:
    with pytest.raises(WeightsUnavailable) as caught:
        Embedder(model_name=model, pretrained=pretrained)
    assert names in str(caught.value)


def open_clip_vector(embedder: Embedder, img: PILImage.Image) -> np.ndarray:
    """The reference: open_clip's own preprocessing of one picture, then the model."""
    with torch.inference_mode():
        features = embedder.model.encode_image(embedder.preprocess(img)[None])
    return torch.nn.functional.normalize(features.float(), dim=-1)[0].numpy()


def test_centre_square_is_cut_before_scaling_with_the_same_embedding(embedder: Embedder) -> None:
    seen: list[tuple[int, int]] = []
    real_pixels = embedder._pixels

    def recording(img: PILImage.Image) -> torch.Tensor:
        seen.append(img.size)
        return real_pixels(img)

    photo = PILImage.fromarray(np.random.default_rng(1).integers(0, 255, (24, 36, 3), dtype=np.uint8)).resize(
        (600, 400)
    )
    data = io.BytesIO()
    photo.save(data, format="PNG")
    strip = image_bytes("PNG", size=(1, 400), seed=2)
    embedder._pixels = recording
    try:
        cropped = embedder.encode_image_bytes(data.getvalue())[0]
        embedder.encode_image_bytes(strip)
    finally:
        embedder._pixels = real_pixels
    # A strip reaches the model's preprocessing as its 1x1 centre, not as a 1x400 image to enlarge.
    assert seen == [(400, 400), (1, 1)]
    # For an ordinary photo the order changes nothing that matters.
    assert float(cropped @ open_clip_vector(embedder, photo.convert("RGB"))) > 0.999


@pytest.mark.parametrize("model_name", [TINY, "ViT-B-32"])
def test_batched_scaling_and_normalising_give_open_clips_vectors(model_name: str) -> None:
    """image_tensor stops at uint8 pixels and _forward scales and normalises the batch: the
    fingerprint promises open_clip's preprocessing, so the vectors must be exactly its vectors."""
    embedder = get_embedder(model_name=model_name, pretrained="untrained")
    pictures = [embedder.decode(image_bytes(seed=i, size=(300, 200))) for i in range(3)]
    pixels = [embedder._pixels(picture) for picture in pictures]
    assert pixels[0].dtype == torch.uint8 and pixels[0].shape == (3, embedder.input_size, embedder.input_size)
    batched = embedder._forward(pixels)
    for picture, vector in zip(pictures, batched, strict=True):
        assert np.allclose(vector, open_clip_vector(embedder, picture), atol=1e-6)


def test_embedding_the_longest_accepted_strip_stays_small(tmp_path: Path) -> None:
    """In a fresh process (peak RSS is per process): before the fix, a 1x60000 PNG grew the
    process by gigabytes while the tiny model scaled it up."""
    import subprocess
    import sys

    script = tmp_path / "strip.py"
    script.write_text(
        "import resource, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from indexing.embedder import Embedder\n"
        "from tests.helpers import image_bytes\n"
        f"e = Embedder(model_name={TINY!r}, pretrained='untrained')\n"
        "e.encode_image_bytes(image_bytes('PNG', size=(64, 48)))\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "e.encode_image_bytes(image_bytes('PNG', size=(1, 60000)))\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, str(script), str(root)], capture_output=True, text=True, timeout=120, cwd=root
    )
    assert result.returncode == 0, result.stderr[-2000:]
    grown_mib = int(result.stdout.split()[-1])
    assert grown_mib < 100, f"embedding a 1x60000 strip grew the process by {grown_mib} MiB"


def test_a_preprocessing_without_to_tensor_then_normalize_stays_whole_per_image() -> None:
    """Only open_clip's usual tail (ToTensor, Normalize) is moved to the batch; anything else runs
    as given, per image, and the batch step leaves the stacked tensors alone."""
    from torchvision import transforms

    from indexing.embedder import _split_preprocess

    whole = transforms.Compose([transforms.Resize(8), transforms.ToTensor()])
    pixels, batch_step = _split_preprocess(whole)
    assert pixels is whole
    stacked = torch.ones(2, 3, 8, 8)
    assert batch_step(stacked) is stacked
    split_pixels, _ = _split_preprocess(
        transforms.Compose([*whole.transforms, transforms.Normalize([0.5] * 3, [0.5] * 3)])
    )
    assert split_pixels is not whole
