"""What the admin preview costs at upload and saves in the admin lists, on large plant photos.

For each format: the time to make the preview as a ratio to the validation every upload already
pays (a full decode), and the preview's size as a ratio to the file's (what a changelist row
downloads instead of the file).

    .venv/bin/python -m benchmarks.upload_previews [--megapixels 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import math

import numpy as np
from PIL import Image

from benchmarks.common import Row, Table, Timer, part_photo, setup_django


def photo(megapixels: float, fmt: str) -> bytes:
    width = int(math.sqrt(megapixels * 1e6 * 3 / 2))
    base = Image.open(io.BytesIO(part_photo(1, 512))).resize((width, width * 2 // 3), Image.Resampling.BICUBIC)
    noisy = np.asarray(base, dtype=np.int16) + np.random.default_rng(0).integers(-6, 6, (*base.size[::-1], 3))
    buffer = io.BytesIO()
    options = {"quality": 92} if fmt == "JPEG" else {"compress_level": 1}
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def main(table: Table | None = None, megapixels: float = 20, repeats: int = 3) -> Table:
    setup_django()
    from catalog.image_validation import inspect_image_bytes, thumbnail_jpeg
    from catalog.services import THUMBNAIL_SIDE

    table = table or Table()
    limits = {"max_bytes": 10**10, "max_pixels": 10**10, "max_aspect_ratio": 10**6}
    for fmt in ("JPEG", "PNG"):
        data = photo(megapixels, fmt)
        with Timer() as validate:
            for _ in range(repeats):
                info = inspect_image_bytes(data, **limits)
        with Timer() as make_preview:
            for _ in range(repeats):
                preview = thumbnail_jpeg(data, max_side=THUMBNAIL_SIDE)
        label = f"{info.width}x{info.height} {fmt}, {len(data) / 1e6:.1f} MB"
        table.add(
            Row(
                f"upload preview, {label}",
                f"preview {make_preview.seconds / repeats * 1000:.0f} ms vs validation "
                f"{validate.seconds / repeats * 1000:.0f} ms",
                make_preview.seconds / validate.seconds,
                "informational",
                "extra upload time, as a share of the decode every upload pays",
            ),
            Row(
                f"admin list bytes, {label}",
                f"preview {len(preview) / 1e3:.1f} KB vs file {len(data) / 1e3:.0f} KB",
                len(preview) / len(data),
                "informational",
                "what a changelist row downloads, as a share of the file",
            ),
        )
    return table


def cli(argv: list[str] | None = None) -> Table:
    parser = argparse.ArgumentParser()
    parser.add_argument("--megapixels", type=float, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    return main(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    print(cli().render())
