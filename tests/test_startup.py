"""Start-up with the garbage collector paused (simsearch_project/startup.py), seen from the
processes that use it: `manage.py` commands and the WSGI module gunicorn loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REPORT = "import gc; print('collector', gc.isenabled(), gc.get_freeze_count())"
BLAS_REPORT = "import os, sys; print('blas', os.environ.get('OPENBLAS_THREAD_TIMEOUT'), 'numpy' in sys.modules)"


def output(tmp_path: Path, *args: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SIMSEARCH_", "AWS_", "OPENBLAS_"))}
    clean.pop("DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={
            **clean,
            "DJANGO_SETTINGS_MODULE": "simsearch_project.settings",
            "DJANGO_SECRET_KEY": "x" * 60,
            "SIMSEARCH_DATA_DIR": str(tmp_path),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.stdout + result.stderr[-2000:]


def run(tmp_path: Path, *args: str) -> tuple[bool, int]:
    text = output(tmp_path, *args)
    line = next((x for x in text.splitlines() if x.startswith("collector ")), None)
    assert line, text
    _, enabled, frozen = line.split()
    return enabled == "True", int(frozen)


@pytest.mark.parametrize(
    "args",
    [("manage.py", "shell", "-c", REPORT), ("-c", f"import simsearch_project.wsgi; {REPORT}")],
    ids=["manage.py", "wsgi"],
)
def test_set_up_runs_with_the_collector_paused_then_collects_again(tmp_path: Path, args: tuple[str, ...]) -> None:
    enabled, frozen = run(tmp_path, *args)
    # A long-running process (qcluster, a gunicorn worker) must collect garbage after set-up...
    assert enabled
    # ...and what set-up made (Django, torch, the admin's imports) sits frozen, out of every
    # collection's way: hundreds of thousands of objects, not the handful a plain start leaves.
    assert frozen > 100_000


def test_plain_set_up_leaves_the_collector_alone(tmp_path: Path) -> None:
    """Without the pause (pytest, a script calling django.setup()), nothing is frozen."""
    enabled, frozen = run(tmp_path, "-c", f"import django; django.setup(); {REPORT}")
    assert enabled and frozen == 0


ENTRY_POINTS = {
    "manage.py": ("manage.py", "shell", "-c", BLAS_REPORT),
    "wsgi": ("-c", f"import simsearch_project.wsgi; {BLAS_REPORT}"),
    "asgi": ("-c", f"import simsearch_project.asgi; {BLAS_REPORT}"),
    "benchmarks": ("-c", f"import benchmarks.common; {BLAS_REPORT}"),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_entry_point_shortens_the_idle_blas_spin_before_numpy_loads(tmp_path: Path, entry: str) -> None:
    """OpenBLAS reads OPENBLAS_THREAD_TIMEOUT once, when numpy (or FAISS) loads it: each entry
    point sets it on its first lines, and the process has loaded numpy by the time it reports."""
    assert "blas 12 True" in output(tmp_path, *ENTRY_POINTS[entry])


def test_the_operators_own_blas_setting_wins(tmp_path: Path) -> None:
    assert "blas 20 True" in output(tmp_path, *ENTRY_POINTS["benchmarks"], OPENBLAS_THREAD_TIMEOUT="20")
