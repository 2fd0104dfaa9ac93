"""Shared set-up for the benchmarks: an isolated Django environment, gallery images, the
machine description and the result table. Benchmarks measure; they never assert."""

from __future__ import annotations

import io
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def setup_django(data_dir: Path | None = None, **env: str) -> Path:
    """Configure a throw-away SQLite + local-files deployment and migrate it."""
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="simsearch-bench-"))
    defaults = {
        "DJANGO_SETTINGS_MODULE": "simsearch_project.settings",
        "DJANGO_SECRET_KEY": "benchmark-only-secret-key-0123456789abcdefghijklmnopqrstuvwxyz",
        "DJANGO_ALLOWED_HOSTS": "testserver,127.0.0.1,localhost",
        "DJANGO_SECURE_SSL_REDIRECT": "false",
        "DJANGO_SECURE_COOKIES": "false",
        "SIMSEARCH_DATA_DIR": str(data_dir),
        "SIMSEARCH_MODEL": "ViT-B-32",
        "SIMSEARCH_PRETRAINED": "untrained",
        "SIMSEARCH_SEARCH_THROTTLE": "1000000/minute",
        "HF_HUB_OFFLINE": "1",
    }
    for key, value in {**defaults, **env}.items():
        os.environ[key] = value
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("REDIS_URL", None)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    return data_dir


def part_photo(seed: int, size: int) -> bytes:
    """A JPEG of `size` px with real structure (not noise), like a part photo."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
    noise = rng.normal(0, 6, (size, size, 3))
    pixels = np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_kb = int(
            next(
                line.split()[1]
                for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")
            )
        )
        memory = f"{mem_kb / 1024 / 1024:.0f} GiB"
    except (OSError, StopIteration):
        memory = "?"
    import torch

    return (
        f"{cpu}, {os.cpu_count()} cores, {memory} RAM, Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        + (f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no GPU")
    )


@dataclass
class Row:
    name: str
    measured: str
    ratio: float | None = None
    target: str = ""
    notes: str = ""


@dataclass
class Table:
    rows: list[Row] = field(default_factory=list)

    def add(self, *rows: Row) -> None:
        self.rows.extend(rows)
        for row in rows:
            print(format_row(row), flush=True)

    def render(self) -> str:
        lines = ["| benchmark | measured | ratio | target | notes |", "|---|---|---|---|---|"]
        lines += [format_row(row) for row in self.rows]
        return "\n".join(lines)


def format_row(row: Row) -> str:
    ratio = "" if row.ratio is None else f"{row.ratio:.3f}"
    return f"| {row.name} | {row.measured} | {ratio} | {row.target} | {row.notes} |"


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
