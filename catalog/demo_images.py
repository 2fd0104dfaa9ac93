"""Procedurally drawn part photos for the demo catalog: normal parts and four defect kinds.
Django-free; deterministic for a given seed."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 256
PART_SHAPES = ("plate", "gear", "housing")
DEFECT_KINDS = ("scratch", "dent", "stain", "crack")


def _background(rng: np.random.Generator) -> Image.Image:
    tone = rng.integers(40, 90)
    gradient = np.linspace(tone, tone + rng.integers(10, 40), SIZE, dtype=np.float32)
    pixels = np.tile(gradient[:, None], (1, SIZE)) + rng.normal(0, 4, (SIZE, SIZE))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert("RGB")


def _draw_part(img: Image.Image, shape: str, rng: np.random.Generator) -> None:
    draw = ImageDraw.Draw(img)
    grey = int(rng.integers(150, 200))
    metal = (grey, grey + int(rng.integers(0, 6)), grey + int(rng.integers(0, 10)))
    cx, cy = SIZE / 2 + rng.normal(0, 6), SIZE / 2 + rng.normal(0, 6)
    if shape == "plate":
        w, h = rng.integers(150, 180), rng.integers(100, 130)
        draw.rectangle([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], fill=metal, outline=(90, 90, 90), width=2)
        for dx in (-w / 3, w / 3):
            draw.ellipse([cx + dx - 9, cy - 9, cx + dx + 9, cy + 9], fill=(50, 50, 55))
    elif shape == "gear":
        r, teeth = rng.integers(70, 85), 14
        points = []
        for i in range(teeth * 2):
            angle = math.pi * i / teeth + rng.normal(0, 0.01)
            radius = r + (12 if i % 2 == 0 else 0)
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        draw.polygon(points, fill=metal, outline=(80, 80, 80))
        draw.ellipse([cx - 22, cy - 22, cx + 22, cy + 22], fill=(45, 45, 50))
    else:
        w, h = rng.integers(160, 190), rng.integers(120, 150)
        draw.rounded_rectangle(
            [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], radius=28, fill=metal, width=3, outline=(70, 70, 75)
        )
        draw.rounded_rectangle(
            [cx - w / 4, cy - h / 4, cx + w / 4, cy + h / 4], radius=12, outline=(110, 110, 115), width=3
        )


def _draw_defect(img: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    draw = ImageDraw.Draw(img, "RGBA")
    cx, cy = SIZE / 2 + rng.normal(0, 30), SIZE / 2 + rng.normal(0, 25)
    if kind == "scratch":
        for _ in range(rng.integers(1, 4)):
            angle, length = rng.uniform(0, math.pi), rng.uniform(50, 110)
            dx, dy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
            shade = int(rng.integers(220, 255))
            draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=(shade, shade, shade, 230), width=2)
            cx, cy = cx + rng.normal(0, 8), cy + rng.normal(0, 8)
    elif kind == "dent":
        r = rng.uniform(12, 24)
        draw.ellipse([cx - r, cy - r * 0.8, cx + r, cy + r * 0.8], fill=(40, 40, 45, 150))
        draw.arc([cx - r, cy - r * 0.8, cx + r, cy + r * 0.8], 200, 340, fill=(245, 245, 245, 220), width=2)
    elif kind == "stain":
        layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
        stain = ImageDraw.Draw(layer)
        color = (int(rng.integers(90, 140)), int(rng.integers(60, 90)), int(rng.integers(20, 50)))
        for _ in range(rng.integers(3, 7)):
            r = rng.uniform(8, 20)
            x, y = cx + rng.normal(0, 10), cy + rng.normal(0, 10)
            stain.ellipse([x - r, y - r, x + r, y + r], fill=(*color, 120))
        img = Image.alpha_composite(img.convert("RGBA"), layer.filter(ImageFilter.GaussianBlur(4))).convert("RGB")
    else:  # crack
        x, y = cx, cy
        angle = rng.uniform(0, 2 * math.pi)
        points = [(x, y)]
        for _ in range(rng.integers(8, 14)):
            angle += rng.normal(0, 0.6)
            x, y = x + 7 * math.cos(angle), y + 7 * math.sin(angle)
            points.append((x, y))
        draw.line(points, fill=(20, 20, 20, 255), width=2)
        branch = points[len(points) // 2]
        draw.line([branch, (branch[0] + rng.normal(0, 15), branch[1] + rng.normal(0, 15))], fill=(25, 25, 25, 255))
    return img


def draw_part_photo(*, shape: str, defect: str | None, seed: int) -> bytes:
    """A JPEG of one part of `shape`, with a `defect` drawn on it (None = a normal part)."""
    rng = np.random.default_rng(seed)
    img = _background(rng)
    _draw_part(img, shape, rng)
    if defect is not None:
        img = _draw_defect(img, defect, rng)
    img = img.rotate(float(rng.uniform(-8, 8)), resample=Image.Resampling.BILINEAR, fillcolor=(60, 60, 60))
    pixels = np.asarray(img, dtype=np.float32) * rng.uniform(0.85, 1.15) + rng.normal(0, 3, (SIZE, SIZE, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
