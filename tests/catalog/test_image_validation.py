"""Upload validation is pure code: real Pillow decoding, no database."""

from __future__ import annotations

import hashlib

import pytest

from catalog.image_validation import ALLOWED_FORMATS, InvalidImage, inspect_image_bytes
from tests.helpers import image_bytes, png_header_bomb

LIMITS = {"max_bytes": 5_000_000, "max_pixels": 20_000_000}


@pytest.mark.parametrize("fmt", list(ALLOWED_FORMATS))
def test_accepts_each_allowed_format_and_records_facts(fmt: str) -> None:
    data = image_bytes(fmt, size=(70, 30), seed=3)
    info = inspect_image_bytes(data, **LIMITS)
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
        (image_bytes("PNG", size=(256, 256))[:-300], LIMITS, "corrupt"),
        (image_bytes("PNG", size=(256, 256)), {"max_bytes": 1000, "max_pixels": 10**9}, "too_large"),
        (image_bytes("PNG", size=(400, 300)), {"max_bytes": 10**9, "max_pixels": 100_000}, "too_many_pixels"),
        (png_header_bomb(), {"max_bytes": 10**9, "max_pixels": 10**12}, "decompression_bomb"),
    ],
    ids=["empty", "text", "pdf", "gif", "truncated-jpeg", "truncated-png", "too-large", "too-many-pixels", "bomb"],
)
def test_rejects_bad_bytes_with_a_reason(data: bytes, limits: dict, code: str) -> None:
    with pytest.raises(InvalidImage) as caught:
        inspect_image_bytes(data, **limits)
    assert caught.value.code == code
    assert str(caught.value)  # a sentence a person can read


def test_pixel_limit_applies_before_decoding_a_bomb() -> None:
    with pytest.raises(InvalidImage) as caught:
        inspect_image_bytes(png_header_bomb(5000, 5000), max_bytes=10**9, max_pixels=1_000_000)
    assert caught.value.code == "too_many_pixels"
    assert "5000x5000" in str(caught.value)
