"""The legacy (V1) gallery: a folder whose file names carry the metadata,
`<product>_<defect>_<anything>.<ext>`. Django-free."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
# Defect parts that mean "no defect" in legacy names.
NORMAL_DEFECT_CODES = {"normal", "ok", "good", "정상"}


@dataclass(frozen=True)
class LegacyFile:
    path: Path
    product: str
    defect: str

    @property
    def image_type(self) -> str:
        return "normal" if self.defect.lower() in NORMAL_DEFECT_CODES else "defect"


def parse_legacy_name(name: str) -> tuple[str, str] | None:
    """(product, defect) from `<product>_<defect>_<anything>.<ext>`, or None if it doesn't parse."""
    path = Path(name)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return None
    parts = path.stem.split("_", 2)
    if len(parts) != 3 or not all(part.strip() for part in parts):
        return None
    return parts[0], parts[1]


def scan_legacy_folder(folder: Path) -> tuple[list[LegacyFile], list[tuple[str, str]]]:
    """Image files under `folder` (sorted, so ids are stable for the same folder), and the
    (relative name, reason) of every file that was left out."""
    if not folder.is_dir():
        raise FileNotFoundError(f"The legacy gallery folder {folder} does not exist (INDEX_DIR_V1).")
    files: list[LegacyFile] = []
    rejected: list[tuple[str, str]] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = str(path.relative_to(folder))
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            rejected.append((relative, f"not an image file name ({path.suffix or 'no extension'})"))
            continue
        parsed = parse_legacy_name(path.name)
        if parsed is None:
            rejected.append((relative, "name is not <product>_<defect>_<anything>.<ext>"))
            continue
        files.append(LegacyFile(path=path, product=parsed[0], defect=parsed[1]))
    return files, rejected
