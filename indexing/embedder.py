"""CLIP image/text embeddings with open_clip. Django-free.

Heavy: create an Embedder once per process, after fork (see `indexing.runtime`)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image
from torchvision.transforms import Normalize, ToTensor

from indexing.weights import is_checkpoint_path

logger = logging.getLogger(__name__)

UNTRAINED = "untrained"
UNTRAINED_SEED = 0
MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
# The tiny architecture the project ships (random weights, a few MB) for fast tests.
open_clip.add_model_config(MODEL_CONFIG_DIR)


class WeightsUnavailable(RuntimeError):
    """The configured model or weights cannot be loaded; the message names the setting to change."""


class ImageDecodeError(ValueError):
    def __init__(self, index: int, message: str):
        super().__init__(message)
        self.index = index


@dataclass
class EncodedImages:
    """Vectors for the images that could be read, in input order; `missing` lists the input
    positions whose loader raised FileNotFoundError."""

    vectors: np.ndarray
    present: list[int]
    missing: list[int] = field(default_factory=list)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _weights_identity(model_name: str, pretrained: str) -> tuple[str | None, str]:
    """(value to pass to open_clip as `pretrained`, identity string for the fingerprint)."""
    if pretrained == UNTRAINED:
        versions = f"open_clip {open_clip.__version__}, torch {torch.__version__.split('+')[0]}"
        return None, f"untrained:seed={UNTRAINED_SEED}:{versions}"
    path = Path(pretrained).expanduser()
    if is_checkpoint_path(pretrained):
        if not path.is_file():
            raise WeightsUnavailable(
                f"SIMSEARCH_PRETRAINED points at {path}, which is not a file. Copy the checkpoint there "
                f"(`manage.py fetch_weights` writes one on a machine with internet), or set SIMSEARCH_PRETRAINED "
                f"to an open_clip tag or '{UNTRAINED}'."
            )
        return str(path), f"file:sha256={_sha256_file(path)}"
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if pretrained not in tags:
        raise WeightsUnavailable(
            f"SIMSEARCH_PRETRAINED={pretrained!r} is not a known open_clip tag for {model_name} "
            f"(known: {', '.join(tags) or 'none'}). Use one of those, a checkpoint file path, or '{UNTRAINED}'."
        )
    return pretrained, f"tag:{pretrained}"


class Embedder:
    def __init__(self, *, model_name: str, pretrained: str, device: str = "cpu", threads: int | None = None):
        if model_name not in open_clip.list_models():
            raise WeightsUnavailable(
                f"SIMSEARCH_MODEL={model_name!r} is not an open_clip architecture "
                f"(e.g. ViT-B-32, ViT-B-16, ViT-L-14, simsearch-tiny)."
            )
        if threads:
            torch.set_num_threads(threads)
        source, weights_identity = _weights_identity(model_name, pretrained)
        if source is None:
            torch.manual_seed(UNTRAINED_SEED)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=source, device=device)
        except Exception as exc:  # download failures, corrupt checkpoints, wrong architecture
            raise WeightsUnavailable(
                f"Could not load weights {pretrained!r} for {model_name}: {exc}. On a server without internet, "
                f"copy a checkpoint file and set SIMSEARCH_PRETRAINED to its path."
            ) from exc
        model.eval()
        self.model = model
        self.model_name = model_name
        self.pretrained = pretrained
        self.is_untrained = source is None
        self.device = device
        self.preprocess = preprocess
        self._pixels, self._normalize = _split_preprocess(preprocess)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.input_size = int(
            model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
        )
        preprocess_cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
        # "shortest" (open_clip's default) scales the short side to the input size, then keeps the
        # centre square. Scaling first would enlarge a 1x10000 strip to 224x2.2M pixels (gigabytes)
        # only to throw nearly all of it away; cutting the same centre square out first gives the
        # same picture and never materialises more than the original or the model input.
        size = preprocess_cfg.get("size", self.input_size)
        square_input = not isinstance(size, (tuple, list)) or len(set(size)) == 1
        self.crop_square_first = preprocess_cfg.get("resize_mode", "shortest") == "shortest" and square_input
        self.fingerprint_source = {
            "model": model_name,
            "weights": weights_identity,
            "preprocess": {k: preprocess_cfg.get(k) for k in sorted(preprocess_cfg)},
            "input_size": self.input_size,
            "decode": "pil-jpeg-draft-1x,center-square-first,rgb"
            if self.crop_square_first
            else "pil-jpeg-draft-1x,rgb",
        }
        self.fingerprint = hashlib.sha256(json.dumps(self.fingerprint_source, sort_keys=True).encode()).hexdigest()[:32]
        with torch.inference_mode():
            self.dim = int(
                self.model.encode_image(torch.zeros(1, 3, self.input_size, self.input_size, device=device)).shape[-1]
            )
        logger.info("Loaded %s (%s) on %s, fingerprint %s", model_name, weights_identity, device, self.fingerprint)

    # -- decoding ----------------------------------------------------------------------------

    def image_tensor(self, data: bytes) -> torch.Tensor:
        """Decode (`decode`) and preprocess one image, for `_forward`. With open_clip's usual
        preprocessing this stops at the resized uint8 pixels [3, H, W]: scaling to [0, 1] and
        normalising run on the whole batch, on the model's device (the same arithmetic as
        `preprocess`, so the same vectors). Per-image work then stays in Pillow, which releases
        the GIL, so decode threads scale with the cores feeding a GPU."""
        return self._pixels(self.decode(data))

    def decode(self, data: bytes) -> Image.Image:
        """The RGB picture the model's preprocessing starts from. JPEGs are decoded at the smallest DCT scale (1/1 to
        1/8) whose picture still covers the model's input on both sides, and resized from there:
        decoding is most of the cost of a factory photo (a 512 px JPEG decodes in 1.4 ms at
        1/2 scale against 3.3 ms in full), and on a CPU build every millisecond of it is taken
        from the forward pass."""
        with Image.open(io.BytesIO(data)) as img:
            if img.format == "JPEG":
                img.draft("RGB", (self.input_size, self.input_size))
            if self.crop_square_first:
                img = _center_square(img)
            return img.convert("RGB")

    # -- encoding ----------------------------------------------------------------------------

    def _forward(self, batch: Sequence[torch.Tensor]) -> np.ndarray:
        """Embed `image_tensor` results in one pass: (len(batch), dim), normalised float32."""
        with torch.inference_mode():
            features = self.model.encode_image(self._normalize(torch.stack(list(batch)).to(self.device)))
            features = torch.nn.functional.normalize(features.float(), dim=-1)
        return features.cpu().numpy().astype(np.float32, copy=False)

    def encode_images(
        self,
        loaders: Sequence[Callable[[], bytes]],
        *,
        batch_size: int = 32,
        decode_threads: int | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> EncodedImages:
        """Embed the images the loaders return, L2-normalised float32, in input order.

        Reading and decoding run in threads, a couple of batches ahead of the model, so I/O
        and JPEG decoding overlap with the forward pass (no processes: queue workers are
        daemonic). `on_batch(n_done)` is called after each batch."""
        count = len(loaders)
        vectors = np.empty((count, self.dim), dtype=np.float32)
        present: list[int] = []
        missing: list[int] = []
        threads = decode_threads or max(2, os.cpu_count() or 2)

        def load(index: int) -> torch.Tensor:
            data = loaders[index]()
            try:
                return self.image_tensor(data)
            except Exception as exc:
                raise ImageDecodeError(index, f"image {index} could not be decoded: {exc}") from exc

        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode") as pool:
            pending: deque[tuple[int, Future[torch.Tensor]]] = deque()
            next_index = 0

            def top_up() -> None:
                nonlocal next_index
                while next_index < count and len(pending) < 2 * batch_size + threads:
                    pending.append((next_index, pool.submit(load, next_index)))
                    next_index += 1

            batch: list[torch.Tensor] = []
            batch_positions: list[int] = []
            done = 0
            top_up()
            try:
                while pending:
                    index, future = pending.popleft()
                    top_up()
                    try:
                        batch.append(future.result())
                        batch_positions.append(index)
                    except FileNotFoundError:
                        missing.append(index)
                    if len(batch) == batch_size or (not pending and batch):
                        vectors[len(present) : len(present) + len(batch)] = self._forward(batch)
                        present.extend(batch_positions)
                        done += len(batch)
                        batch, batch_positions = [], []
                        if on_batch:
                            on_batch(done + len(missing))
            finally:
                for _, future in pending:
                    future.cancel()
        return EncodedImages(vectors=vectors[: len(present)], present=present, missing=missing)

    def encode_image_bytes(self, data: bytes) -> np.ndarray:
        """One query image -> (1, dim) normalised vector."""
        return self._forward([self.image_tensor(data)])

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        with torch.inference_mode():
            tokens = self.tokenizer(list(texts)).to(self.device)
            features = torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)
        return features.cpu().numpy().astype(np.float32, copy=False)


def _split_preprocess(
    preprocess: Callable[[Image.Image], torch.Tensor],
) -> tuple[Callable[[Image.Image], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """(per image: picture -> tensor, per batch: stacked tensors on the device -> model input).
    open_clip's image preprocessing is picture operations, then ToTensor (uint8 -> float / 255),
    then Normalize: the last two are split off to run on the batch. Any other pipeline stays
    whole, per image."""
    steps = list(getattr(preprocess, "transforms", []))
    if (
        len(steps) < 2
        or not isinstance(steps[-2], ToTensor)
        or not isinstance(steps[-1], Normalize)
        or any(isinstance(step, (ToTensor, Normalize)) for step in steps[:-2])
    ):
        return preprocess, lambda batch: batch
    picture_steps, normalize = steps[:-2], steps[-1]
    mean = torch.tensor(normalize.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(normalize.std, dtype=torch.float32).view(1, -1, 1, 1)

    def pixels(img: Image.Image) -> torch.Tensor:
        for step in picture_steps:
            img = step(img)
        if img.mode != "RGB":
            img = img.convert("RGB")
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)

    def scale_and_normalize(batch: torch.Tensor) -> torch.Tensor:
        # ToTensor's float(x) / 255, then Normalize's (x - mean) / std, in the same order.
        x = batch.to(torch.float32).div_(255)
        return x.sub_(mean.to(x.device)).div_(std.to(x.device))

    return pixels, scale_and_normalize


def _center_square(img: Image.Image) -> Image.Image:
    """The centred square of side min(width, height): what a shortest-side resize followed by a
    centre crop keeps of the image."""
    width, height = img.size
    side = min(width, height)
    if width == height:
        return img
    left, top = (width - side) // 2, (height - side) // 2
    return img.crop((left, top, left + side, top + side))


_cache: dict[tuple[str, str, str], Embedder] = {}
_cache_lock = threading.Lock()


def get_embedder(*, model_name: str, pretrained: str, device: str = "cpu", threads: int | None = None) -> Embedder:
    """The process-wide Embedder for this configuration, created on first use."""
    key = (model_name, pretrained, device)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = Embedder(model_name=model_name, pretrained=pretrained, device=device, threads=threads)
        return _cache[key]


def resolve_device(setting: str) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting
