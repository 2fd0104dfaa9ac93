from __future__ import annotations

from pathlib import Path

import pytest

from indexing.legacy import parse_legacy_name, scan_legacy_folder


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("prod1_scratch_0001.jpg", ("prod1", "scratch")),
        ("prod1_scratch_cam2_left.PNG", ("prod1", "scratch")),
        ("gear-b_normal_x.bmp", ("gear-b", "normal")),
        ("prod1_scratch.jpg", None),
        ("prod1__0001.jpg", None),
        ("prod1_scratch_0001.txt", None),
        ("noseparators.jpg", None),
    ],
)
def test_parse_legacy_name(name: str, expected: tuple[str, str] | None) -> None:
    assert parse_legacy_name(name) == expected


def test_scan_reports_names_that_do_not_parse(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ["a_scratch_1.jpg", "sub/b_ok_2.png", "README.txt", "broken.jpg"]:
        (tmp_path / name).write_bytes(b"x")
    files, rejected = scan_legacy_folder(tmp_path)
    assert [(f.product, f.defect, f.image_type) for f in files] == [("a", "scratch", "defect"), ("b", "ok", "normal")]
    assert sorted(name for name, _ in rejected) == ["README.txt", "broken.jpg"]
    with pytest.raises(FileNotFoundError, match="INDEX_DIR_V1"):
        scan_legacy_folder(tmp_path / "nope")
