"""The CUDA path (SIMSEARCH_DEVICE=cuda or auto on a GPU host) gives the answers of the CPU path.

These run only where torch sees a CUDA device: the team's GPU machine, not CI (which has none).
The CPU path is covered by the rest of the suite; here each CUDA result is compared with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from indexing.anomaly import PatchFeatureExtractor
from indexing.embedder import Embedder
from tests.helpers import image_bytes, surface_photo

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the GPU machine)")


def loaders(blobs: list[bytes]) -> list:
    return [lambda data=data: data for data in blobs]


@pytest.mark.parametrize("model_name", ["simsearch-tiny", "ViT-B-32"])
def test_embeddings_on_cuda_match_the_cpu_and_share_its_fingerprint(model_name: str) -> None:
    cpu = Embedder(model_name=model_name, pretrained="untrained", device="cpu")
    cuda = Embedder(model_name=model_name, pretrained="untrained", device="cuda")
    assert next(cuda.model.parameters()).is_cuda
    # Cached embeddings are keyed by the fingerprint: a CPU and a GPU worker must agree on it
    # only because they compute the same vectors.
    assert cuda.fingerprint == cpu.fingerprint
    blobs = [image_bytes(seed=i, size=(300, 200)) for i in range(10)]
    on_cpu = cpu.encode_images(loaders(blobs), batch_size=4).vectors
    on_cuda = cuda.encode_images(loaders(blobs), batch_size=4).vectors
    assert on_cuda.dtype == np.float32 and on_cuda.shape == on_cpu.shape
    cosines = np.sum(on_cpu * on_cuda, axis=1)
    assert cosines.min() > 0.999, cosines
    # Different photos stay different (the comparison above is not between constant vectors).
    assert float(on_cuda[0] @ on_cuda[1]) < cosines.min()
    single = cuda.encode_image_bytes(blobs[3])[0]
    assert float(single @ on_cuda[3]) == pytest.approx(1.0, abs=1e-4)
    text = cuda.encode_texts(["scratch"])
    assert float(text[0] @ cpu.encode_texts(["scratch"])[0]) > 0.999


def test_patch_features_on_cuda_match_the_cpu() -> None:
    cpu = PatchFeatureExtractor(input_size=128, device="cpu", precision="float32")  # not bfloat16 on an AMX host
    cuda = PatchFeatureExtractor(input_size=128, device="cuda")
    assert cuda.fingerprint == cpu.fingerprint
    photos = [surface_photo(0), surface_photo(1, defect=True), surface_photo(2), surface_photo(3, defect=True)]
    on_cpu = cpu.extract(photos, batch_size=2)
    on_cuda = cuda.extract(photos, batch_size=2)
    assert on_cuda.shape == on_cpu.shape == (4, 16, 16, cpu.dim)
    scale = float(np.abs(on_cpu).max())
    assert float(np.abs(on_cuda - on_cpu).max()) < 1e-2 * scale
    assert float(np.abs(on_cuda[0] - on_cuda[1]).max()) > 0.1 * scale
