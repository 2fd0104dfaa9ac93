"""Checks that uploaded bytes are a real image we accept, and makes the small previews the admin
shows. Django-free, so it is easy to test."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError

# Pillow format name -> file extension we store it under.
ALLOWED_FORMATS: dict[str, str] = {
    "JPEG": "jpg",
    "PNG": "png",
    "BMP": "bmp",
    "TIFF": "tif",
    "WEBP": "webp",
}


def gettext_noop(message: str) -> str:
    """Marks a message for translation (makemessages finds this name) without needing Django here:
    the caller translates `InvalidImage.message` in the language of the request."""
    return message


class InvalidImage(ValueError):
    """The bytes are not an image we accept; `code` is machine-readable, str() is for people (in
    English). `message` % `params` is the same text, for a caller that translates `message` first."""

    def __init__(self, code: str, message: str, params: dict[str, object] | None = None):
        self.code = code
        self.message = message
        self.params = params or {}
        super().__init__(message % self.params)


@dataclass(frozen=True)
class ImageInfo:
    format: str
    extension: str
    width: int
    height: int
    file_size: int
    sha256: str


def _limit_text(n_bytes: int) -> str:
    return f"{n_bytes / (1024 * 1024):.1f} MB" if n_bytes >= 1024 * 1024 else f"{n_bytes} bytes"


def inspect_image_bytes(
    data: bytes, *, max_bytes: int, max_pixels: int, max_aspect_ratio: float, smallest_scale: bool = False
) -> ImageInfo:
    """Decode `data` completely and describe it, or raise InvalidImage saying what is wrong.

    `max_aspect_ratio` bounds long side / short side: a 1x60000 strip is within any pixel limit but
    is no photo of a part, and every model preprocessing has to stretch it.

    `smallest_scale`: decode a JPEG at its smallest DCT scale (1/8). Every coefficient is still
    entropy-decoded, which is where truncated and corrupt data show (the same files are refused),
    without the full-size inverse DCT and colour conversion: the whole inspection took 7-10 ms
    instead of 13-15 for a 2048x1536 photo. For query photos, which the models read at small
    scales anyway; catalog uploads, whose full-size pixels are served and previewed, are decoded
    at full size."""
    if not data:
        raise InvalidImage("empty", gettext_noop("The file is empty."))
    if len(data) > max_bytes:
        raise InvalidImage(
            "too_large",
            gettext_noop("The file is %(size)s; the limit is %(limit)s."),
            {"size": _limit_text(len(data)), "limit": _limit_text(max_bytes)},
        )
    allowed = ", ".join(ALLOWED_FORMATS)
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice its limit; treat that as a bomb too.
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS)) as img:
                image_format = img.format or ""
                width, height = img.size
                if width * height > max_pixels:
                    raise InvalidImage(
                        "too_many_pixels",
                        gettext_noop("The image is %(size)s pixels (%(pixels)s); the limit is %(limit)s pixels."),
                        {"size": f"{width}x{height}", "pixels": f"{width * height:,}", "limit": f"{max_pixels:,}"},
                    )
                if max(width, height) > max_aspect_ratio * max(min(width, height), 1):
                    raise InvalidImage(
                        "aspect_ratio",
                        gettext_noop(
                            "The image is %(size)s pixels, an aspect ratio of %(ratio)s:1; the limit is "
                            "%(limit)s:1 (SIMSEARCH_MAX_ASPECT_RATIO)."
                        ),
                        {
                            "size": f"{width}x{height}",
                            "ratio": f"{max(width, height) / max(min(width, height), 1):,.0f}",
                            "limit": f"{max_aspect_ratio:g}",
                        },
                    )
                img.verify()
            # verify() leaves the image unusable and misses truncated pixel data: decode fully.
            with PILImage.open(io.BytesIO(data), formats=[image_format]) as img:
                if smallest_scale:
                    img.draft(img.mode, (1, 1))  # JPEG only; other formats decode at full size
                img.load()
    except InvalidImage:
        raise
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning):
        raise InvalidImage(
            "decompression_bomb",
            gettext_noop("The image declares far more pixels than it could reasonably hold."),
        ) from None
    except UnidentifiedImageError:
        raise InvalidImage(
            "not_an_image",
            gettext_noop("The file is not an image in an accepted format (%(formats)s)."),
            {"formats": allowed},
        ) from None
    except (
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        IndexError,
        TypeError,
        MemoryError,
    ) as exc:
        raise InvalidImage(
            "corrupt",
            gettext_noop("The image could not be decoded (truncated or corrupt): %(reason)s"),
            {"reason": exc},
        ) from None
    if image_format not in ALLOWED_FORMATS:
        raise InvalidImage(
            "format_not_allowed",
            gettext_noop("Format %(format)s is not accepted (%(formats)s)."),
            {"format": image_format or "unknown", "formats": allowed},
        )
    return ImageInfo(
        format=image_format,
        extension=ALLOWED_FORMATS[image_format],
        width=width,
        height=height,
        file_size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def read_limited(stream: io.IOBase, *, max_bytes: int) -> bytes:
    """Read at most max_bytes + 1 bytes, so an oversized upload is detected without reading it all."""
    if hasattr(stream, "seek"):
        stream.seek(0)
    return stream.read(max_bytes + 1)


def thumbnail_jpeg(data: bytes, *, max_side: int) -> bytes:
    """A JPEG no larger than max_side on either side, upright (EXIF orientation applied), for
    previews. Call it on bytes inspect_image_bytes accepted. Pillow may raise on odd files (a
    broken EXIF block, say): callers treat any exception as "no preview"."""
    with PILImage.open(io.BytesIO(data)) as img:
        if img.format == "JPEG":
            # Decode at a reduced DCT scale: a 20 MP photo costs a fraction of a full decode.
            img.draft("RGB", (max_side, max_side))
        # Shrink first (every mode supports it), so mode conversions below work on a small copy.
        img.thumbnail((max_side, max_side))
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:  # a broken EXIF block (SyntaxError, struct errors...): show it as stored
            pass
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            img = PILImage.new("RGB", rgba.size, "white")
            img.paste(rgba, mask=rgba.getchannel("A"))
        elif img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            # 16-bit or float greyscale (industrial cameras): stretch the used range to 8 bits.
            grey = img.convert("F")
            low, high = grey.getextrema()
            scale = 255.0 / (high - low) if high > low else 1.0
            img = grey.point(lambda v: (v - low) * scale).convert("L")
        out = io.BytesIO()
        img.convert("RGB").save(out, format="JPEG", quality=85, optimize=True)
        return out.getvalue()
