"""Peak memory of embedding one query image: the worst images the upload limits accept against an
ordinary photo, and the old preprocessing order (scale, then crop) on the strip that used to cost
gigabytes.

    .venv/bin/python -m benchmarks.embed_memory [--model ViT-B-32]

Each case runs in a fresh process (peak RSS only grows): load the model, embed a small warm-up
image, then report how much the peak resident size grew while embedding the case."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import ROOT, Row, Table

CASES = {
    "ordinary photo, 1024x768 JPEG": ("JPEG", 1024, 768, True),
    "longest accepted strip, 1x400 PNG": ("PNG", 1, 400, True),
    "largest accepted photo, 7745x7745 PNG (60 MP)": ("PNG", 7745, 7745, True),
    "largest accepted strip, 387x154800 PNG (60 MP, 400:1)": ("PNG", 387, 154_800, True),
    "old order (scale, then crop), 1x10000 PNG": ("PNG", 1, 10_000, False),
}

CHILD = """
import json, resource, sys
from pathlib import Path
from indexing.embedder import Embedder
path, warm_up, crop_first, model = json.loads(sys.argv[1])
embedder = Embedder(model_name=model, pretrained="untrained", threads=1)
embedder.crop_square_first = crop_first and embedder.crop_square_first
data = Path(path).read_bytes()
embedder.encode_image_bytes(Path(warm_up).read_bytes())
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    embedder.encode_image_bytes(data)
    outcome = "ok"
except MemoryError:
    outcome = "MemoryError"
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print("RESULT " + json.dumps({"grown_mib": grown / 1024, "outcome": outcome}))
"""


def picture(path: Path, fmt: str, width: int, height: int) -> str:
    """Made here, not in the measured process: generating 60 MP would set its peak."""
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt, **({"compress_level": 1} if fmt == "PNG" else {}))
    return str(path)


def measure(case: tuple[str, int, int, bool], model: str, folder: Path) -> dict:
    fmt, width, height, crop_first = case
    path = picture(folder / f"{width}x{height}.{fmt.lower()}", fmt, width, height)
    warm_up = picture(folder / "warm-up.jpg", "JPEG", 64, 48)
    result = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([path, warm_up, crop_first, model])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        return {"grown_mib": float("nan"), "outcome": (result.stderr.strip().splitlines() or ["failed"])[-1][:120]}
    return json.loads(lines[-1][7:])


def cli(argv: list[str]) -> Table:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="ViT-B-32")
    args = parser.parse_args(argv)
    table = Table()
    with tempfile.TemporaryDirectory() as folder:
        results = {name: measure(case, args.model, Path(folder)) for name, case in CASES.items()}
    # A 60 MP PNG has no reduced-scale decode: its pixels are the floor (bounded by
    # SIMSEARCH_MAX_IMAGE_PIXELS). Preprocessing must add next to nothing on top of that.
    square = max(results["largest accepted photo, 7745x7745 PNG (60 MP)"]["grown_mib"], 1.0)
    for name, result in results.items():
        table.add(
            Row(
                f"embed memory: {name}",
                f"+{result['grown_mib']:.0f} MiB peak RSS ({result['outcome']})",
                result["grown_mib"] / square,
                "<= 1.1 (no more than a square photo of the same pixel count)" if "old" not in name else "",
                f"{args.model}; ratio against the 60 MP square photo",
            )
        )
    return table


if __name__ == "__main__":
    cli(sys.argv[1:])
