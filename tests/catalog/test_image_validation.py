"""Upload validation is pure code: real Pillow decoding, no database."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image as PILImage

from catalog.image_validation import ALLOWED_FORMATS, InvalidImage, inspect_image_bytes, thumbnail_jpeg
from tests.helpers import image_bytes, png_header_bomb

LIMITS = {"max_bytes": 5_000_000, "max_pixels": 20_000_000, "max_aspect_ratio": 400}


@pytest.mark.parametrize("smallest_scale", [False, True], ids=["full-size", "query-scale"])
@pytest.mark.parametrize("fmt", list(ALLOWED_FORMATS))
def test_accepts_each_allowed_format_and_records_facts(fmt: str, smallest_scale: bool) -> None:
    data = image_bytes(fmt, size=(70, 30), seed=3)
    info = inspect_image_bytes(data, **LIMITS, smallest_scale=smallest_scale)
    assert (info.format, info.width, info.height) == (fmt, 70, 30)
    assert info.extension == ALLOWED_FORMATS[fmt]
    assert info.file_size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("data", "limits", "code"),
    [
        (b"", LIMITS, "empty"),
        (b"hello, this is plainly text and not a picture", LIMITS, "not_an_image"),
        (b"%PDF-1.7\n" + b"0" * 200, LIMITS, "not_an_image"),
        (image_bytes("GIF"), LIMITS, "not_an_image"),
        (image_bytes("JPEG", size=(256, 256))[:600], LIMITS, "corrupt"),
        (image_bytes("JPEG", size=(512, 384))[:-200], LIMITS, "corrupt"),
        (image_bytes("PNG", size=(256, 256))[:-300], LIMITS, "corrupt"),
        (image_bytes("PNG", size=(256, 256)), {**LIMITS, "max_bytes": 1000, "max_pixels": 10**9}, "too_large"),
        (image_bytes("PNG", size=(400, 300)), {**LIMITS, "max_bytes": 10**9, "max_pixels": 100_000}, "too_many_pixels"),
        (png_header_bomb(), {**LIMITS, "max_bytes": 10**9, "max_pixels": 10**12}, "decompression_bomb"),
        (image_bytes("PNG", size=(1, 401)), LIMITS, "aspect_ratio"),
        (image_bytes("PNG", size=(2001, 5)), LIMITS, "aspect_ratio"),
    ],
    ids=[
        "empty",
        "text",
        "pdf",
        "gif",
        "truncated-jpeg",
        "jpeg-without-its-last-200-bytes",
        "truncated-png",
        "too-large",
        "too-many-pixels",
        "bomb",
        "tall-strip",
        "wide-strip",
    ],
)
@pytest.mark.parametrize("smallest_scale", [False, True], ids=["full-size", "query-scale"])
def test_rejects_bad_bytes_with_a_reason(data: bytes, limits: dict, code: str, smallest_scale: bool) -> None:
    with pytest.raises(InvalidImage) as caught:
        inspect_image_bytes(data, **limits, smallest_scale=smallest_scale)
    assert caught.value.code == code
    assert str(caught.value)  # a sentence a person can read


def test_aspect_ratio_limit_is_inclusive_and_named() -> None:
    assert inspect_image_bytes(image_bytes("PNG", size=(1, 400)), **LIMITS).height == 400
    with pytest.raises(InvalidImage) as caught:
        inspect_image_bytes(image_bytes("PNG", size=(60000, 1)), **LIMITS)
    assert "SIMSEARCH_MAX_ASPECT_RATIO" in str(caught.value) and "60000x1" in str(caught.value)


def test_pixel_limit_applies_before_decoding_a_bomb() -> None:
    with pytest.raises(InvalidImage) as caught:
        inspect_image_bytes(png_header_bomb(5000, 5000), max_bytes=10**9, max_pixels=1_000_000, max_aspect_ratio=400)
    assert caught.value.code == "too_many_pixels"
    assert "5000x5000" in str(caught.value)


def encoded(img: PILImage.Image, fmt: str, **options) -> bytes:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def preview(data: bytes, max_side: int = 320) -> PILImage.Image:
    img = PILImage.open(io.BytesIO(thumbnail_jpeg(data, max_side=max_side)))
    assert img.format == "JPEG" and img.mode == "RGB"
    return img


@pytest.mark.parametrize("fmt", list(ALLOWED_FORMATS))
def test_thumbnail_is_a_small_jpeg_with_the_same_aspect(fmt: str) -> None:
    assert preview(image_bytes(fmt, size=(1200, 600), seed=1)).size == (320, 160)
    assert preview(image_bytes(fmt, size=(90, 40), seed=1)).size == (90, 40)  # never enlarged


def test_thumbnail_of_a_large_jpeg_keeps_its_colour() -> None:
    photo = PILImage.new("RGB", (4000, 3000), (200, 30, 30))
    pixels = np.asarray(preview(encoded(photo, "JPEG")), dtype=float)
    assert pixels.shape == (240, 320, 3)
    assert np.allclose(pixels.mean(axis=(0, 1)), (200, 30, 30), atol=6)


def test_thumbnail_turns_a_rotated_phone_photo_upright() -> None:
    landscape_pixels = PILImage.new("RGB", (400, 200), "gray")
    exif = PILImage.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    assert preview(encoded(landscape_pixels, "JPEG", exif=exif)).size == (160, 320)


def test_thumbnail_of_an_image_with_a_broken_exif_block_is_shown_as_stored() -> None:
    data = encoded(PILImage.new("RGB", (40, 30), "red"), "PNG", exif=b"Exif\x00\x00garbage-not-tiff")
    inspect_image_bytes(data, **LIMITS)  # an acceptable upload...
    assert preview(data).size == (40, 30)  # ...that still gets its preview


def test_thumbnail_puts_transparency_on_white() -> None:
    clear = PILImage.new("RGBA", (64, 64), (0, 0, 0, 0))
    assert np.asarray(preview(encoded(clear, "PNG"))).min() >= 250


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_thumbnail_of_16_bit_greyscale_uses_the_full_range(fmt: str) -> None:
    # Industrial cameras write 12/16-bit frames whose values sit far below 65535: a plain 8-bit
    # conversion would show them black or clipped.
    frame = np.random.default_rng(0).integers(1000, 3000, size=(60, 80)).astype(np.uint16)
    pixels = np.asarray(preview(encoded(PILImage.fromarray(frame), fmt)))
    assert pixels.min() < 40 and pixels.max() > 215
