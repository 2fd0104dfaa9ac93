"""Anomaly check against the normal images of a product (PatchCore-style). Django-free.

Method (Roth et al. 2021, "Towards Total Recall in Industrial Anomaly Detection"):

- Features: a torchvision ResNet's layer2 and layer3 maps, each averaged over its 3x3
  neighbourhood, layer3 upsampled (bilinear) to layer2's grid and concatenated: one vector per
  patch (stride 8: a 32x32 grid at the default 256 px, PatchCore's own input scale). ResNet-18
  gives 128 + 256 = 384 channels; `feature_dim` (default 192) averages adjacent channels down to
  that many (PatchCore's adaptive average pooling): half the memory and search time, quality
  within noise of all 384. The whole photo is resized to `input_size` squared (not
  centre-cropped as the CLIP embedder does): a defect near the border must still be seen, and
  the map must cover the photo the line software sent. EXIF orientation is not applied (as in
  the embedder): maps align with the stored pixels.
- Memory bank: the patches of the product's normal images, subsampled by greedy k-center
  (farthest point) selection computed on a fixed random projection to `CORESET_PROJECTION_DIM`
  dimensions, stored as float16. `sources` keeps the normal image each kept patch came from.
- Score: each query patch's Euclidean distance to its nearest bank patch, searched exactly
  (FAISS `IndexFlatL2` over a float32 copy of the float16 bank). Not a graph index: the image
  score is the worst patch, so one neighbour a search misses is a false alarm. An HNSW graph
  (M 16, efConstruction 40, efSearch 64, as before 2026-11-26) did miss on the benchmark's gear:
  its plain background is a tight cluster of patches that the graph's links stay inside, and
  distinctive patches (teeth) were given neighbours up to 5 units too far, twice the threshold;
  wider settings moved the misses, not removed them. Exact search costs the bank size: 10-17 ms
  per photo for 2,048 rows (20 normal photos), 40-85 ms for 10,240 (100), about 60-160 ms at
  the 16,384-row cap on 2 cores. The patch map is upsampled to `input_size` and smoothed with a
  Gaussian (sigma 4 px at that size, as PatchCore); image score = the peak of that smoothed
  map (PatchCore takes the largest raw patch distance: the smoothed peak measured 0.01-0.04 higher
  image AUROC here, and it is the value the heatmap shows). The map returned is then resized to
  the photo's size.
- Calibration: each normal image (up to `max_calibration_images`, spread evenly) is scored
  against the bank with that image's own patches taken out (the coreset is not recomputed: the
  other images' kept patches are the bank it would be compared against). Removing bank entries can
  only raise distances, so every training normal scores at or below its leave-one-out score when
  served against the full bank. threshold = max(LOO scores) * `threshold_margin` (1.0 by
  default). On benchmarks/anomaly_quality.py (untrained weights, 20 normals per product) it
  flagged none of 20 held-out normals; mean + 2 std and the 95th percentile also flagged none
  there and caught a few more defects, but from the 5 images a product may have, a spread or a
  percentile is noise, and they give no guarantee for the training normals. A line stopped for
  a good part costs more than a second look, so the maximum it is; `threshold_margin` and the
  per-product override (admin) move it. This LOO is an approximation: image i is scored against
  the coreset minus i's rows, not against a coreset recomputed without i; its scores sat in the
  same range as held-out normals' in the benchmark. The nearest other-image row is searched
  exactly, in the bank's rows before and after i's (one run, as the bank keeps input order): a
  graph search with i's rows excluded got lost as scoring's did and tripled the gear's threshold
  at 100 normals (4.33 instead of 1.28), which only hides defects.
- Map scale: `map_scale` = 2 x calibrated threshold, fixed when the model is fitted. Every
  rendering of that product's maps uses it: a map value v becomes clip(v / map_scale, 0, 1), so
  in the 16-bit PNG `pixel / 65535 * map_scale` gives back the distance (saturating at map_scale),
  and the calibrated threshold sits at half scale (32768). Overriding the threshold later (admin)
  changes the verdict only, not the scale, so maps stay comparable across a product's queries.
  The map at the photo's size is a bilinear resize of the input-size map, so its maximum can be a
  little below the score.

Cost (2 CPU cores; benchmarks/anomaly_quality.py): features 20-37 ms per 256 px photo in float32
(the trunk runs with its batch norms folded and channels-last, 1.5x faster than plain), 10-17 ms
in bfloat16; fitting grows with the patch count (the coreset compares patches with patches, the
leave-one-out search each calibrated image with the bank): about 20 ms per photo for 20 photos
(coreset 8-10, leave-one-out 8, smoothing 0.1) and 50 for 100 at the defaults on an AVX2 host.
`max_bank_size` (16,384 rows, 6 MiB float16, plus a 12 MiB float32 copy while served) caps the
bank, the scoring time and, with `max_calibration_images`, the calibration. The caller's stack
of features is 0.8 MB per photo (float32 32x32x192): pick at most a few hundred normals per
product.

Determinism: untrained weights are drawn from a private generator seeded with `UNTRAINED_SEED`,
so every process creates the same network; the fingerprint hashes the resulting parameters (not
only the seed), so a torch/torchvision change that draws different numbers gives a different
fingerprint instead of a silently different model. The coreset and projections use fixed seeds.
Searches are exact, so processes agree up to float rounding, and up to about 1% of a feature
between a host that computes features in bfloat16 (CPUs with AMX or AVX512-BF16,
`PatchFeatureExtractor.precision`) and one in float32.

Heavy: create one `PatchFeatureExtractor` per process, after fork, like the CLIP embedder."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Union

import faiss
import numpy as np
import torch
import torchvision
from PIL import Image
from torch.fx.experimental.optimization import fuse

from indexing.embedder import UNTRAINED, ImageDecodeError, WeightsUnavailable, _sha256_file
from indexing.png import encode_png

logger = logging.getLogger(__name__)

UNTRAINED_SEED = 0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LAYERS = ("layer2", "layer3")
# torchvision constructor name -> channels of layer2 and layer3
BACKBONES: dict[str, tuple[int, int]] = {
    "resnet18": (128, 256),
    "resnet34": (128, 256),
    "resnet50": (512, 1024),
    "wide_resnet50_2": (512, 1024),
}
CORESET_PROJECTION_DIM = 128
GAUSSIAN_SIGMA = 4.0
MODEL_FORMAT = "simsearch-anomaly-v1"
# How a model is fitted from its features, beyond the parameters: part of the key under which a
# build reuses a product's model, so a change here fits every model once more. 2: exact
# leave-one-out calibration (1 searched a graph that could miss and raise the threshold).
FIT_REVISION = 2
ARRAY_NAMES = ("features", "sources", "descriptors", "calibration_scores", "normal_ids")

PhotoInput = Union[bytes, Image.Image]  # noqa: UP007 - used at runtime in isinstance checks


class IncompatibleAnomalyModel(ValueError):
    """A stored anomaly model was made with other features than the extractor in this process."""


# -- feature extraction --------------------------------------------------------------------------


def photo_size(photo: PhotoInput) -> tuple[int, int]:
    """(width, height) of the photo as stored, read from the header only."""
    if isinstance(photo, Image.Image):
        return photo.size
    with Image.open(io.BytesIO(photo)) as img:
        return img.size


def decode_photo(data: bytes, *, at_least: tuple[int, int]) -> Image.Image:
    """RGB image; large JPEGs are decoded at reduced scale (DCT draft, still at least
    at_least=(width, height)), which is most of the cost of a factory photo. Callers validate
    uploads first (catalog.image_validation); this only decodes."""
    with Image.open(io.BytesIO(data)) as img:
        if img.format == "JPEG":
            img.draft("RGB", at_least)
        return img.convert("RGB")


def _resnet(backbone: str) -> torch.nn.Module:
    if backbone not in BACKBONES:
        raise WeightsUnavailable(f"Anomaly backbone {backbone!r} is not supported (use one of {', '.join(BACKBONES)}).")
    return getattr(torchvision.models, backbone)(weights=None)


def _parameters_sha256(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class _Trunk(torch.nn.Module):
    """The ResNet up to layer3; returns the layer2 and layer3 maps."""

    def __init__(self, resnet: torch.nn.Module):
        super().__init__()
        self.stem = torch.nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1)
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f2 = self.layer2(self.stem(x))
        return f2, self.layer3(f2)


PRECISIONS = ("auto", "float32", "bfloat16")


def bfloat16_is_fast() -> bool:
    """Whether this CPU computes in bfloat16 natively, so that oneDNN runs the ResNet's
    convolutions in bfloat16 faster than in float32: AMX tiles (Intel Xeon since Sapphire Rapids:
    2.7x, 17.4 -> 6.5 ms per photo at 256 px on 2 cores) or AVX512-BF16 (AMD Zen 4, Intel Cooper
    Lake: 1.7x, 25-30 -> 14-17 ms). Without either, bfloat16 is emulated and can be slower."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except Exception:  # a torch without the probes: assume not
        return False


class PatchFeatureExtractor:
    """Patch features of photos: `extract(photos)` -> float32 [n, grid_h, grid_w, dim].

    `weights`: UNTRAINED (random, seeded: demos and tests, flagged by `is_untrained`) or the path
    of a torchvision state_dict (.pth) for `backbone`; layer4/fc may be absent. `feature_dim`:
    channels kept (None: all). `threads`: torch.set_num_threads, process-wide, as the embedder.
    `precision`: the ResNet's arithmetic on the CPU, "float32", "bfloat16" or "auto" (bfloat16
    where `bfloat16_is_fast`, else float32; GPUs keep float32). Features of the two agree to
    about 0.3% on average (1% at most), like the GPU path's: the fingerprint is the same, so
    models fitted on one kind of host serve on the other."""

    def __init__(
        self,
        *,
        weights: str = UNTRAINED,
        backbone: str = "resnet18",
        input_size: int = 256,
        feature_dim: int | None = 192,
        device: str = "cpu",
        threads: int | None = None,
        precision: str = "auto",
    ):
        if input_size < 64 or input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16 and at least 64, not {input_size}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        on_cpu = not device.startswith("cuda")
        if precision == "auto":
            precision = "bfloat16" if on_cpu and bfloat16_is_fast() else "float32"
        self.precision = precision
        self._autocast_device = "cpu" if on_cpu else "cuda"
        if threads:
            torch.set_num_threads(threads)
        resnet = self._load(backbone, weights)
        # Inference only: batch norms folded into the convolutions (torch.fx) and NHWC memory
        # layout, which oneDNN's CPU convolutions prefer: 1.5x faster on CPU here, the same
        # numbers up to float rounding (the fingerprint hashes the unfused parameters).
        unfused = _Trunk(resnet).eval()
        identity = _parameters_sha256(unfused) if weights == UNTRAINED else ""
        self.trunk = fuse(unfused).to(device).to(memory_format=torch.channels_last)
        self.backbone = backbone
        self.weights = weights
        self.is_untrained = weights == UNTRAINED
        self.device = device
        self.input_size = input_size
        full_dim = sum(BACKBONES[backbone])
        if feature_dim is not None and not 0 < feature_dim <= full_dim:
            raise ValueError(f"feature_dim must be in 1..{full_dim}, not {feature_dim}")
        self.feature_dim = feature_dim
        self.dim = feature_dim or full_dim
        self.grid_shape = (input_size // 8, input_size // 8)
        weights_identity = (
            f"untrained:seed={UNTRAINED_SEED}:params-sha256={identity}"
            if self.is_untrained
            else f"file:sha256={_sha256_file(Path(weights).expanduser())}"
        )
        self.fingerprint_source = {
            "kind": "patchcore",
            "backbone": backbone,
            "weights": weights_identity,
            "layers": list(LAYERS),
            "aggregation": "avg3x3,upsample-bilinear,concat",
            "feature_dim": self.dim,
            "reduction": "adaptive-avg-channels" if feature_dim else "none",
            "input_size": input_size,
            "preprocess": "pil-jpeg-draft-2x,rgb,squash-bilinear,imagenet-norm",
        }
        self.fingerprint = hashlib.sha256(json.dumps(self.fingerprint_source, sort_keys=True).encode()).hexdigest()[:32]
        self._mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        logger.info(
            "Loaded anomaly features %s (%s) at %d px on %s in %s, fingerprint %s",
            backbone,
            weights_identity,
            input_size,
            device,
            self.precision,
            self.fingerprint,
        )

    @staticmethod
    def _load(backbone: str, weights: str) -> torch.nn.Module:
        if weights == UNTRAINED:
            # A private generator state: the same network in every process, whatever ran before.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(UNTRAINED_SEED)
                return _resnet(backbone)
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailable(
                f"The anomaly backbone checkpoint {path} is not a file. Copy a torchvision {backbone} state_dict "
                f"(.pth) there, or use '{UNTRAINED}'."
            )
        resnet = _resnet(backbone)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
                state = state["state_dict"]
            missing, _ = resnet.load_state_dict(state, strict=False)
        except Exception as exc:  # corrupt file, wrong architecture (shape mismatch), not a state_dict
            raise WeightsUnavailable(f"Could not load {backbone} weights from {path}: {exc}") from exc
        needed = [key for key in missing if not key.startswith(("layer4.", "fc."))]
        if needed:
            raise WeightsUnavailable(
                f"{path} is not a {backbone} state_dict: it lacks {len(needed)} tensors, e.g. {needed[0]}"
            )
        return resnet

    def preprocess(self, photo: PhotoInput) -> torch.Tensor:
        """[3, input_size, input_size] normalised later on the device."""
        if isinstance(photo, Image.Image):
            img = photo.convert("RGB")
        else:
            img = decode_photo(photo, at_least=(2 * self.input_size, 2 * self.input_size))
        img = img.resize((self.input_size, self.input_size), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)

    def _forward(self, batch: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            x = (batch.to(self.device).float() / 255.0 - self._mean) / self._std
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self._autocast_device, dtype=torch.bfloat16, enabled=self.precision == "bfloat16"):
                f2, f3 = self.trunk(x)
            f2, f3 = f2.float(), f3.float()
            f2 = torch.nn.functional.avg_pool2d(f2, 3, stride=1, padding=1, count_include_pad=False)
            f3 = torch.nn.functional.avg_pool2d(f3, 3, stride=1, padding=1, count_include_pad=False)
            f3 = torch.nn.functional.interpolate(f3, size=f2.shape[-2:], mode="bilinear", align_corners=False)
            features = torch.cat([f2, f3], dim=1).permute(0, 2, 3, 1).contiguous()  # [b, h, w, c]
            if self.feature_dim:
                b, h, w, c = features.shape
                if c % self.feature_dim == 0:  # adaptive pooling's bins are then runs of c // dim channels
                    features = features.reshape(b, h, w, self.feature_dim, c // self.feature_dim).mean(dim=-1)
                else:
                    features = torch.nn.functional.adaptive_avg_pool1d(features.reshape(-1, 1, c), self.feature_dim)
                    features = features.reshape(b, h, w, self.feature_dim)
        return features.float().cpu().numpy()

    def extract(self, photos: Sequence[PhotoInput], *, batch_size: int = 8) -> np.ndarray:
        """float32 [n, grid_h, grid_w, dim] for the photos (encoded bytes or PIL images), in order.
        A photo that cannot be decoded raises ImageDecodeError with its position."""
        out = np.empty((len(photos), *self.grid_shape, self.dim), dtype=np.float32)
        for start in range(0, len(photos), batch_size):
            tensors = []
            for index in range(start, min(start + batch_size, len(photos))):
                try:
                    tensors.append(self.preprocess(photos[index]))
                except Exception as exc:
                    raise ImageDecodeError(index, f"image {index} could not be decoded: {exc}") from exc
            out[start : start + len(tensors)] = self._forward(torch.stack(tensors))
        return out


# -- memory bank ---------------------------------------------------------------------------------


def _l2_index(vectors: np.ndarray) -> faiss.IndexFlatL2:
    index = faiss.IndexFlatL2(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def _nearest_distances_outside(bank: np.ndarray, queries: np.ndarray, start: int, end: int) -> np.ndarray:
    """Euclidean distance of each query to its nearest bank row outside rows [start, end), by
    exact search over the two contiguous parts (no copy of the bank)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    squared = np.full(len(queries), np.inf, dtype=np.float32)
    for part in (bank[:start], bank[end:]):
        if len(part):
            found, _ = faiss.knn(queries, part, 1)
            np.minimum(squared, found[:, 0], out=squared)
    return np.sqrt(np.maximum(squared, 0.0))


def greedy_coreset(features: np.ndarray, count: int, *, seed: int = 0, active_size: int = 2048) -> np.ndarray:
    """Row indices (sorted) of `count` rows chosen by greedy k-center selection: each pick is the
    row farthest from all rows picked so far (the first one at random, seeded), so the kept rows
    cover the set with a small radius. Distances are computed on a fixed Gaussian random
    projection to CORESET_PROJECTION_DIM dimensions (Johnson-Lindenstrauss), as PatchCore does.

    The textbook loop updates every row after every pick: one matrix-vector product over all rows
    per pick, memory bound (30 s for 50 photos here). This makes the same picks (up to float
    rounding in near ties) with far less work. Each row keeps an upper bound of its distance to the
    picks, exact as of the first `seen` picks. A phase takes the `active_size` rows with the
    largest bounds, brings their bounds up to date (one matrix product per block, BLAS speed), and
    picks among them while the best is at least the phase's cut-off: every other row's bound, and
    so its distance, is below it. Rows that have fallen far behind the covering radius are never
    updated again. The phase size only moves the cost, not the picks (up to rounding in near
    ties): 2,048 rows took 15-20% less time than 4,096 at 20 and 100 normals per product (Intel
    Xeon, 2 cores)."""
    total = len(features)
    if count >= total:
        return np.arange(total)
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    x = np.ascontiguousarray(features, dtype=np.float32)
    if x.shape[1] > CORESET_PROJECTION_DIM:
        projection = rng.standard_normal((x.shape[1], CORESET_PROJECTION_DIM)).astype(np.float32)
        x = x @ (projection / np.float32(math.sqrt(CORESET_PROJECTION_DIM)))
    dim = x.shape[1]
    norms = np.einsum("ij,ij->i", x, x)
    # |a - c|^2 = |a|^2 + [a, 1].[-2c, |c|^2]: rows carry a 1, picks (in pick order, so a row's
    # missed picks are one contiguous slice) carry -2c and |c|^2, and one matrix product gives all
    # but |a|^2, which is added after the minimum (15-25% less time than gathering and scaling the
    # picks for every block, for 100 photos here).
    rows = np.empty((total, dim + 1), dtype=np.float32)
    rows[:, :dim], rows[:, dim] = x, 1.0
    x = rows[:, :dim]  # one copy of the (projected) rows, not two
    centers = np.empty((count, dim + 1), dtype=np.float32)
    picks = np.empty(count, dtype=np.int64)

    def take(i: int, row: int) -> np.ndarray:
        picks[i], centers[i, :dim], centers[i, dim] = row, -2.0 * x[row], norms[row]
        return centers[i]

    bound = rows @ take(0, int(rng.integers(total))) + norms  # squared distance to the nearest pick
    bound[picks[0]] = -np.inf  # picked rows are never picked again, even with rounding
    done = 1
    seen = np.ones(total, dtype=np.int64)  # bound[i] accounts for picks[: seen[i]]
    while done < count:
        if total > active_size:
            cutoff = np.partition(bound, total - active_size)[total - active_size]
            active = np.flatnonzero(bound >= cutoff)
        else:
            cutoff, active = -np.inf, np.arange(total)
        behind = active[seen[active] < done]
        behind = behind[np.argsort(seen[behind], kind="stable")]
        for start in range(0, len(behind), 1024):  # blocks of rows that missed about the same picks
            block = behind[start : start + 1024]
            missed = rows[block] @ centers[seen[block[0]] : done].T
            bound[block] = np.minimum(bound[block], missed.min(axis=1) + norms[block])
        ra, na, da = rows[active], norms[active], bound[active]
        distances = np.empty_like(da)
        while done < count:
            best = int(np.argmax(da))
            if da[best] < cutoff or da[best] == -np.inf:
                break
            np.matmul(ra, take(done, int(active[best])), out=distances)
            done += 1
            distances += na
            np.minimum(da, distances, out=da)
            da[best] = -np.inf
        bound[active] = da
        seen[active] = done
    return np.sort(picks)


@dataclass(frozen=True, eq=False)
class AnomalyModel:
    """One product's memory bank and calibration. Serialise with to_bytes (an .npz, no pickle)."""

    features: np.ndarray  # float16 [m, dim]: coreset of the normal images' patches
    sources: np.ndarray  # int32 [m]: position (in the fit input) of the normal image of each row
    descriptors: np.ndarray  # float16 [n, dim]: mean patch feature of each normal image
    calibration_scores: np.ndarray  # float32 [n]: leave-one-out score per normal image, NaN if not scored
    normal_ids: np.ndarray  # int64 [n]: the caller's id of each normal image (catalog image id), fit order
    threshold: float
    map_scale: float
    grid_shape: tuple[int, int]
    input_size: int
    feature_fingerprint: str
    normal_count: int
    params: dict = field(default_factory=dict)  # how it was fitted (ratio, limits, rule), for the record

    @property
    def nbytes(self) -> int:
        return int(
            self.features.nbytes
            + self.sources.nbytes
            + self.descriptors.nbytes
            + self.calibration_scores.nbytes
            + self.normal_ids.nbytes
        )

    @cached_property
    def patch_index(self) -> faiss.IndexFlatL2:
        """Exact index of the bank (a float32 copy) for scoring (module docstring), made on first
        use; searching it is thread-safe."""
        return _l2_index(self.features)

    @cached_property
    def descriptor_center(self) -> np.ndarray:
        """Mean of the normal images' descriptors: what they all share (ReLU features are all
        positive, so uncentred cosines all sit near 1 and say little)."""
        return self.descriptors.astype(np.float32).mean(axis=0, keepdims=True)

    @cached_property
    def descriptor_index(self) -> faiss.IndexFlatIP:
        vectors = np.ascontiguousarray(self.descriptors.astype(np.float32) - self.descriptor_center)
        faiss.normalize_L2(vectors)
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        return index

    def require_fingerprint(self, fingerprint: str) -> None:
        if fingerprint != self.feature_fingerprint:
            raise IncompatibleAnomalyModel(
                f"This anomaly model was fitted on features {self.feature_fingerprint}; the extractor here makes "
                f"{fingerprint}. Rebuild the normal index with the current anomaly backbone settings."
            )

    def to_bytes(self) -> bytes:
        meta = {
            "format": MODEL_FORMAT,
            "threshold": self.threshold,
            "map_scale": self.map_scale,
            "grid_shape": list(self.grid_shape),
            "input_size": self.input_size,
            "feature_fingerprint": self.feature_fingerprint,
            "normal_count": self.normal_count,
            "params": self.params,
        }
        buffer = io.BytesIO()
        np.savez(
            buffer,
            meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8),
            features=self.features,
            sources=self.sources,
            descriptors=self.descriptors,
            calibration_scores=self.calibration_scores,
            normal_ids=self.normal_ids,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> AnomalyModel:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                meta = json.loads(archive["meta"].tobytes())
                arrays = {name: archive[name] for name in ARRAY_NAMES}
        except Exception as exc:
            raise ValueError(f"not an anomaly model file: {exc}") from exc
        if meta.get("format") != MODEL_FORMAT:
            raise ValueError(f"unknown anomaly model format {meta.get('format')!r}")
        model = cls(
            features=arrays["features"].astype(np.float16, copy=False),
            sources=arrays["sources"].astype(np.int32, copy=False),
            descriptors=arrays["descriptors"].astype(np.float16, copy=False),
            calibration_scores=arrays["calibration_scores"].astype(np.float32, copy=False),
            normal_ids=arrays["normal_ids"].astype(np.int64, copy=False),
            threshold=float(meta["threshold"]),
            map_scale=float(meta["map_scale"]),
            grid_shape=(int(meta["grid_shape"][0]), int(meta["grid_shape"][1])),
            input_size=int(meta["input_size"]),
            feature_fingerprint=str(meta["feature_fingerprint"]),
            normal_count=int(meta["normal_count"]),
            params=dict(meta.get("params") or {}),
        )
        n, m = model.normal_count, len(model.features)
        if model.features.ndim != 2 or model.sources.shape != (m,) or model.descriptors.shape != (n, model.dim):
            raise ValueError("anomaly model arrays do not agree in shape")
        if model.calibration_scores.shape != (n,) or model.normal_ids.shape != (n,):
            raise ValueError("anomaly model arrays do not agree in shape")
        if m and not 0 <= model.sources.min() <= model.sources.max() < n:
            raise ValueError("anomaly model arrays do not agree in shape")
        return model

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])


def _as_patch_stack(features_per_image: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    stack = np.asarray(features_per_image, dtype=np.float32)
    if stack.ndim != 4:
        raise ValueError(f"expected features of shape [n, h, w, dim], got {stack.shape}")
    return stack


def fit_anomaly_model(
    features_per_image: Sequence[np.ndarray] | np.ndarray,
    *,
    feature_fingerprint: str,
    input_size: int,
    normal_ids: Sequence[int] | np.ndarray | None = None,
    coreset_ratio: float = 0.1,
    max_bank_size: int = 16_384,
    max_calibration_images: int = 50,
    threshold_margin: float = 1.0,
    seed: int = 0,
) -> AnomalyModel:
    """Memory bank of the normal images' patches (`features_per_image`: [n, h, w, dim], from
    PatchFeatureExtractor.extract) with its threshold calibrated leave-one-out (module docstring).
    The bank keeps ceil(coreset_ratio * patches) rows, at most `max_bank_size`. `normal_ids`
    (default: positions) name the images in results (`nearest_normal_id`, `peak_normal_id`)."""
    stack = _as_patch_stack(features_per_image)
    n, h, w, dim = stack.shape
    ids = np.arange(n, dtype=np.int64) if normal_ids is None else np.asarray(normal_ids, dtype=np.int64)
    if ids.shape != (n,):
        raise ValueError(f"{len(ids)} normal_ids for {n} images")
    if n < 2:
        raise ValueError("an anomaly model needs at least 2 normal images (leave-one-out calibration)")
    if not 0 < coreset_ratio <= 1:
        raise ValueError(f"coreset_ratio must be in (0, 1], not {coreset_ratio}")
    patches = stack.reshape(n * h * w, dim)
    patch_sources = np.repeat(np.arange(n, dtype=np.int32), h * w)
    count = max(1, min(math.ceil(coreset_ratio * len(patches)), max_bank_size))
    kept = greedy_coreset(patches, count, seed=seed)
    bank = patches[kept].astype(np.float16)
    sources = patch_sources[kept]
    bank32 = bank.astype(np.float32)  # calibrate on exactly the numbers that will be served

    calibration = np.full(n, np.nan, dtype=np.float32)
    # `kept` is sorted and the patches come image by image, so image i's bank rows are one run.
    own_rows = np.searchsorted(sources, np.arange(n + 1))
    for i in np.unique(np.linspace(0, n - 1, min(n, max_calibration_images)).round().astype(int)):
        start, end = own_rows[i], own_rows[i + 1]
        if end - start == len(bank32):  # every kept patch came from this image: nothing to compare against
            continue
        distances = _nearest_distances_outside(bank32, stack[i].reshape(h * w, dim), start, end)
        calibration[i] = smooth_map(distances.reshape(h, w), input_size=input_size).max()
    scored = calibration[~np.isnan(calibration)]
    if not len(scored):
        raise ValueError("no normal image could be scored leave-one-out; add normal images")
    threshold = float(scored.max()) * threshold_margin
    return AnomalyModel(
        features=bank,
        sources=sources,
        descriptors=stack.mean(axis=(1, 2)).astype(np.float16),
        calibration_scores=calibration,
        normal_ids=ids,
        threshold=threshold,
        map_scale=2.0 * threshold,
        grid_shape=(h, w),
        input_size=input_size,
        feature_fingerprint=feature_fingerprint,
        normal_count=n,
        params={
            "coreset_ratio": coreset_ratio,
            "max_bank_size": max_bank_size,
            "patches": int(len(patches)),
            "threshold_rule": f"max(leave-one-out scores) * {threshold_margin:g}",
            "calibrated_images": int(len(scored)),
            "fit_revision": FIT_REVISION,
            "seed": seed,
        },
    )


# -- scoring -------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class AnomalyResult:
    score: float  # peak of the smoothed map at the model's input size: compare with the threshold
    threshold: float
    is_anomalous: bool  # score > threshold
    anomaly_map: np.ndarray  # float32 [height, width] smoothed distances at the requested size
    patch_scores: np.ndarray  # float32 [grid_h, grid_w] raw patch distances
    map_scale: float  # the product's fixed rendering scale (AnomalyModel.map_scale)
    nearest_normal_id: int  # normal image most similar overall: mean patch features, centred, cosine
    nearest_normal_similarity: float  # that cosine, in [-1, 1]
    peak_normal_id: int  # normal image holding the bank patch nearest to the highest raw patch


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = int(math.ceil(4 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


@lru_cache(maxsize=16)
def _smoothing_operator(cells: int, input_size: int) -> np.ndarray:
    """float32 [input_size, cells]: smooth_map along one axis as a matrix. Column j is what a unit
    impulse in cell j becomes: linear upsampling to `input_size` (align_corners=False, the 1-D
    half of bilinear), reflected borders, the Gaussian."""
    impulses = torch.eye(cells, dtype=torch.float32)[:, None, :]  # [cells, 1, cells]
    up = torch.nn.functional.interpolate(impulses, size=input_size, mode="linear", align_corners=False)
    kernel = _gaussian_kernel(GAUSSIAN_SIGMA)
    radius = len(kernel) // 2
    up = torch.nn.functional.pad(up, (radius, radius), mode="reflect")
    smoothed = torch.nn.functional.conv1d(up, kernel.view(1, 1, -1))  # [cells, 1, input_size]
    return np.ascontiguousarray(smoothed[:, 0, :].T.numpy())


def smooth_map(patch_scores: np.ndarray, *, input_size: int) -> np.ndarray:
    """Patch grid -> [input_size, input_size] (bilinear) -> Gaussian blur (sigma GAUSSIAN_SIGMA,
    reflected borders). Its maximum is the image score. Every step is linear and acts on rows and
    columns separately, so the whole is rows_op @ grid @ cols_op.T: two small matrix products
    instead of 2-D convolutions over the upsampled map (0.1 ms instead of 3.4 ms at 256 px here,
    the same numbers up to float rounding)."""
    grid = np.asarray(patch_scores, dtype=np.float32)
    rows = _smoothing_operator(grid.shape[0], input_size)
    cols = _smoothing_operator(grid.shape[1], input_size)
    return (rows @ grid) @ cols.T


def resize_map(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The map resized (bilinear) to size=(width, height); values stay within the map's range."""
    if (anomaly_map.shape[1], anomaly_map.shape[0]) == tuple(size):
        return anomaly_map
    grid = torch.from_numpy(np.ascontiguousarray(anomaly_map, dtype=np.float32))[None, None]
    resized = torch.nn.functional.interpolate(grid, size=(size[1], size[0]), mode="bilinear", align_corners=False)
    return resized[0, 0].numpy()


def score(
    model: AnomalyModel,
    features: np.ndarray,
    *,
    size: tuple[int, int] | None = None,
    threshold: float | None = None,
) -> AnomalyResult:
    """Score one photo's patch features ([h, w, dim] from PatchFeatureExtractor.extract) against
    the bank. The map comes back at size=(width, height) (the photo's, from `photo_size`) or at
    the model's input size. `threshold` overrides the calibrated one for the verdict only."""
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 3 or features.shape[:2] != model.grid_shape or features.shape[2] != model.dim:
        raise IncompatibleAnomalyModel(
            f"features of shape {features.shape} do not fit a model of grid {model.grid_shape} and dim {model.dim}"
        )
    h, w, dim = features.shape
    patches = np.ascontiguousarray(features.reshape(h * w, dim))
    squared, rows = model.patch_index.search(patches, 1)
    distances = np.sqrt(np.maximum(squared[:, 0], 0.0)).astype(np.float32)
    peak = int(np.argmax(distances))
    descriptor = np.ascontiguousarray(patches.mean(axis=0, keepdims=True) - model.descriptor_center)
    faiss.normalize_L2(descriptor)
    similarity, nearest = model.descriptor_index.search(descriptor, 1)
    patch_scores = distances.reshape(h, w)
    smoothed = smooth_map(patch_scores, input_size=model.input_size)
    image_score = float(smoothed.max())
    limit = model.threshold if threshold is None else float(threshold)
    return AnomalyResult(
        score=image_score,
        threshold=limit,
        is_anomalous=image_score > limit,
        anomaly_map=smoothed if size is None else resize_map(smoothed, size),
        patch_scores=patch_scores,
        map_scale=model.map_scale,
        nearest_normal_id=int(model.normal_ids[nearest[0, 0]]),
        nearest_normal_similarity=float(similarity[0, 0]),
        peak_normal_id=int(model.normal_ids[model.sources[rows[peak, 0]]]),
    )


# -- rendering -----------------------------------------------------------------------------------

# Jet-like colour map: (position, red, green, blue), linearly interpolated.
_COLORMAP_STOPS = np.array(
    [
        (0.00, 0.0, 0.0, 0.5),
        (0.11, 0.0, 0.0, 1.0),
        (0.34, 0.0, 1.0, 1.0),
        (0.50, 0.5, 1.0, 0.5),
        (0.66, 1.0, 1.0, 0.0),
        (0.89, 1.0, 0.0, 0.0),
        (1.00, 0.5, 0.0, 0.0),
    ]
)


def normalized_map(anomaly_map: np.ndarray, scale: float) -> np.ndarray:
    """clip(map / scale, 0, 1): the one mapping from distances to display and PNG values."""
    if not scale > 0:
        raise ValueError(f"map scale must be positive, not {scale}")
    values = np.asarray(anomaly_map, dtype=np.float32) / np.float32(scale)  # a new array: clipped in place
    return np.clip(values, 0.0, 1.0, out=values)


def _colormap_lut(levels: int) -> np.ndarray:
    """uint8 [levels, 3]: the colour map sampled at `levels` evenly spaced values in [0, 1]."""
    values = np.linspace(0.0, 1.0, levels)
    channels = [np.interp(values, _COLORMAP_STOPS[:, 0], _COLORMAP_STOPS[:, c]) for c in (1, 2, 3)]
    return (np.stack(channels, axis=-1) * 255.0 + 0.5).astype(np.uint8)


# 4,096 samples: no channel of the map moves more than 4.5 per unit value, so a value rounded to
# the nearest sample is at most 0.14 of a colour level off (at most 1 after rounding). A table
# look-up instead of three interpolations per pixel: 30 ms -> 3 ms for a 1024x768 heatmap.
_COLORMAP_LUT = _colormap_lut(4096)


def colorize(anomaly_map: np.ndarray, scale: float) -> np.ndarray:
    """uint8 [h, w, 3] jet-like colours of clip(map / scale, 0, 1)."""
    values = normalized_map(anomaly_map, scale)
    levels = len(_COLORMAP_LUT) - 1
    indices = (values * np.float32(levels) + np.float32(0.5)).astype(np.uint16)
    return np.take(_COLORMAP_LUT, indices, axis=0, mode="clip")  # clip: a NaN cast to an index stays in range


def _display_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    width, height = size
    if max_side is None or max(width, height) <= max_side:
        return width, height
    factor = max_side / max(width, height)
    return max(1, round(width * factor)), max(1, round(height * factor))


def heatmap_pixels(
    anomaly_map: np.ndarray, scale: float, *, size: tuple[int, int] | None = None, max_side: int | None = 1024
) -> np.ndarray:
    """uint8 [h, w, 3]: the colour-mapped map at size=(width, height) (default: the map's own),
    made no larger than `max_side` on its long side."""
    if size is None:
        size = (anomaly_map.shape[1], anomaly_map.shape[0])
    return colorize(resize_map(anomaly_map, _display_size(size, max_side)), scale)


def overlay_pixels(photo: PhotoInput, heatmap: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """uint8 [h, w, 3]: `heatmap` (heatmap_pixels at the photo's size) blended over the photo at
    the heatmap's size (`alpha` = heatmap weight)."""
    size = (heatmap.shape[1], heatmap.shape[0])
    if isinstance(photo, Image.Image):
        img = photo.convert("RGB")
    else:
        img = decode_photo(photo, at_least=size)
    base = np.asarray(img.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    blended = (1.0 - alpha) * base + alpha * heatmap.astype(np.float32)
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def anomaly_map_pixels(anomaly_map: np.ndarray, scale: float, *, size: tuple[int, int] | None = None) -> np.ndarray:
    """uint16 [h, w]: round(clip(distance / scale, 0, 1) * 65535) at size=(width, height) (default:
    the map's own size, which `score(..., size=photo_size(photo))` makes the photo's)."""
    # In place after the first copy: at the 60-megapixel upload limit each float32 copy is 240 MB.
    values = normalized_map(anomaly_map if size is None else resize_map(anomaly_map, size), scale)
    values *= np.float32(65535.0)
    return np.rint(values, out=values).astype(np.uint16)


def heatmap_png(
    anomaly_map: np.ndarray, scale: float, *, size: tuple[int, int] | None = None, max_side: int | None = 1024
) -> bytes:
    """PNG of `heatmap_pixels`."""
    return encode_png(heatmap_pixels(anomaly_map, scale, size=size, max_side=max_side))


def overlay_png(
    photo: PhotoInput, anomaly_map: np.ndarray, scale: float, *, alpha: float = 0.45, max_side: int | None = 1024
) -> bytes:
    """PNG of the map's heatmap blended over the photo (`overlay_pixels`), at the photo's aspect
    and no larger than `max_side`."""
    heatmap = heatmap_pixels(anomaly_map, scale, size=photo_size(photo), max_side=max_side)
    return encode_png(overlay_pixels(photo, heatmap, alpha=alpha))


def anomaly_map_png16(anomaly_map: np.ndarray, scale: float, *, size: tuple[int, int] | None = None) -> bytes:
    """16-bit greyscale PNG of `anomaly_map_pixels`. Pixel value = round(clip(distance / scale,
    0, 1) * 65535), scale = the product's AnomalyModel.map_scale, so distance = pixel / 65535 *
    scale (saturating at `scale`)."""
    return encode_png(anomaly_map_pixels(anomaly_map, scale, size=size))


def result_pngs(photo: PhotoInput, anomaly_map: np.ndarray, scale: float) -> dict[str, bytes]:
    """The three files of one check, {"heatmap.png", "overlay.png", "anomaly_map.png"}, from a map
    of any size (score's own, at the model's input size, is the cheapest): the same bytes as
    heatmap_png and overlay_png at the photo's aspect, and anomaly_map_png16 at the photo's size,
    write. The heatmap's pixels are made once for both files; the rest is rendered side by side in
    threads (Pillow, numpy and ISA-L let go of the GIL)."""
    size = photo_size(photo)
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="anomaly-png") as pool:
        raw_map = pool.submit(anomaly_map_png16, anomaly_map, scale, size=size)
        heatmap = heatmap_pixels(anomaly_map, scale, size=size)
        coloured = pool.submit(encode_png, heatmap)
        overlay = pool.submit(lambda: encode_png(overlay_pixels(photo, heatmap)))
        return {"heatmap.png": coloured.result(), "overlay.png": overlay.result(), "anomaly_map.png": raw_map.result()}


# -- evaluation ----------------------------------------------------------------------------------


def auroc(labels: np.ndarray | Sequence[bool], scores: np.ndarray | Sequence[float]) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random
    negative, ties counting one half (Mann-Whitney U with average ranks)."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in length")
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if not positives or not negatives:
        raise ValueError("AUROC needs at least one positive and one negative")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    average_rank = upper - (counts - 1) / 2.0  # 1-based rank shared by each tie group
    rank_sum = float(average_rank[inverse][labels].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)
