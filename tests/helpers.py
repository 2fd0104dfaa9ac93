"""Pure helpers for tests: image bytes made on the fly."""

from __future__ import annotations

import io
import struct
import time
import zlib
from collections.abc import Callable
from typing import TypeVar

import numpy as np
from PIL import Image as PILImage


def image_bytes(fmt: str = "JPEG", size: tuple[int, int] = (64, 48), seed: int = 0) -> bytes:
    """A small noisy RGB picture in the given Pillow format; different seeds differ."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def png_header_bomb(width: int = 40_000, height: int = 40_000) -> bytes:
    """A tiny PNG whose header claims a huge image (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 120, interval: float = 0.3) -> T:
    """Poll until `predicate` returns something truthy, and return it; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def warm_queue_worker(folder: str, workers: int) -> int:
    """A task for a real qcluster: load this worker process's embedder, mark the folder with its
    pid, and wait until `workers` processes have done so. Queued once per worker, it leaves every
    worker of the cluster holding a loaded model (a busy worker takes no second task). Returns the pid."""
    import os

    from indexing.runtime import current_embedder

    current_embedder()
    open(os.path.join(folder, str(os.getpid())), "w").close()
    wait_until(lambda: len(os.listdir(folder)) >= workers, timeout=60, interval=0.05)
    return os.getpid()


def build_folders(image_type: str = "defect", engine: str = "v2") -> set[str]:
    """The build folders holding files in the configured storage for one index (the last part of
    each build's artifact_prefix): what builds have left there."""
    from django.conf import settings
    from django.core.files.storage import default_storage

    root = f"{settings.SIMSEARCH_INDEX_PREFIX}/{engine}/{image_type}"
    try:
        folders, _ = default_storage.listdir(root)
    except FileNotFoundError:
        return set()
    # A local folder can stay behind empty; S3 has no folders without objects.
    return {folder for folder in folders if default_storage.listdir(f"{root}/{folder}")[1]}


def stored_names() -> list[str]:
    from django.core.files.storage import default_storage

    """Every object the catalog wrote to the default storage: images/ and thumbnails/ (walks
    folders / prefixes)."""
    found: list[str] = []

    def walk(prefix: str) -> None:
        try:
            dirs, files = default_storage.listdir(prefix)
        except FileNotFoundError:
            return
        found.extend(f"{prefix}/{name}" for name in files)
        for directory in dirs:
            walk(f"{prefix}/{directory}")

    walk("images")
    walk("thumbnails")
    return sorted(found)


def surface_defect_mask(size: tuple[int, int] = (160, 128)) -> np.ndarray:
    """Where `surface_photo(..., defect=True)` puts its dark disc: bool [height, width]."""
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    return np.hypot(xx - width * 0.65, yy - height * 0.47) < min(size) * 0.1


def surface_photo(seed: int, *, defect: bool = False, size: tuple[int, int] = (160, 128)) -> bytes:
    """A PNG of a striped, slightly varying grey surface (a "normal part"); with `defect`, a dark
    disc near the right edge (`surface_defect_mask`)."""
    rng = np.random.default_rng(seed)
    width, height = size
    shading = np.asarray(
        PILImage.fromarray(rng.uniform(-1, 1, (4, 5)).astype(np.float32)).resize(size, PILImage.Resampling.BICUBIC)
    )
    xx = np.mgrid[0:height, 0:width][1]
    grey = 140 + 12 * np.sin(xx / 5.0) + 8 * shading + rng.normal(0, 3, (height, width))
    if defect:
        grey = np.where(surface_defect_mask(size), 35.0, grey)
    buffer = io.BytesIO()
    PILImage.fromarray(np.clip(np.repeat(grey[..., None], 3, axis=2), 0, 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()
