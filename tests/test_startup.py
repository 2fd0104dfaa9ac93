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


def run(tmp_path: Path, *args: str) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SIMSEARCH_", "AWS_"))}
    clean.pop("DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={
            **clean,
            "DJANGO_SETTINGS_MODULE": "simsearch_project.settings",
            "DJANGO_SECRET_KEY": "x" * 60,
            "SIMSEARCH_DATA_DIR": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    line = next((x for x in result.stdout.splitlines() if x.startswith("collector ")), None)
    assert line, result.stdout + result.stderr[-2000:]
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
