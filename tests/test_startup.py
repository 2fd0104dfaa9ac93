"""Start-up with the garbage collector paused (simsearch_project/startup.py), seen from the
processes that use it: `manage.py` commands and the WSGI module gunicorn loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from simsearch_project.startup import blas_core_type, cpu_flags

ROOT = Path(__file__).resolve().parent.parent
REPORT = "import gc; print('collector', gc.isenabled(), gc.get_freeze_count())"
BLAS_REPORT = (
    "import os, sys; print('blas', os.environ.get('OPENBLAS_THREAD_TIMEOUT'), 'numpy' in sys.modules, "
    "os.environ.get('OPENBLAS_CORETYPE'))"
)


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


def loaded_blas_cores(text: str) -> list[str]:
    """The kernel family each OpenBLAS copy reported as it loaded (OPENBLAS_VERBOSE=2)."""
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Core:")]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_entry_point_shortens_the_idle_blas_spin_before_numpy_loads(tmp_path: Path, entry: str) -> None:
    """OpenBLAS reads OPENBLAS_THREAD_TIMEOUT once, when numpy (or FAISS) loads it: each entry
    point sets it on its first lines, and the process has loaded numpy by the time it reports."""
    expected = blas_core_type(cpu_flags())
    text = output(tmp_path, *ENTRY_POINTS[entry], OPENBLAS_VERBOSE="2")
    assert f"blas 12 True {expected}" in text
    if expected:  # what the loaded OpenBLAS says it runs, not only the environment
        assert set(loaded_blas_cores(text)) == {expected}, text


def test_the_operators_own_blas_settings_win(tmp_path: Path) -> None:
    text = output(tmp_path, *ENTRY_POINTS["benchmarks"], OPENBLAS_THREAD_TIMEOUT="20", OPENBLAS_CORETYPE="Prescott")
    assert "blas 20 True Prescott" in text


def test_blas_kernels_follow_the_cpus_instruction_sets(tmp_path: Path) -> None:
    avx512 = "fpu sse2 avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl avx512_bf16 amx_tile"
    zen3 = "fpu sse2 sse4_2 avx avx2 fma bmi2"
    for flags, expected in ((avx512, "SkylakeX"), (zen3, "Haswell"), ("fpu sse2 sse4_2 avx", None), ("", None)):
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: x\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
        assert blas_core_type(cpu_flags(str(cpuinfo))) == expected, flags
    assert cpu_flags(str(tmp_path / "missing")) == set()


def test_faiss_and_numpy_run_the_chosen_blas_kernels(tmp_path: Path) -> None:
    """FAISS's wheel bundles an OpenBLAS older than recent CPUs: left to itself it runs generic
    SSE3 kernels there ("Core: Prescott"), 5-6 times slower than numpy's copy. Both copies say
    which kernels they load (OPENBLAS_VERBOSE=2)."""
    expected = blas_core_type(cpu_flags())
    if expected is None:
        pytest.skip("this CPU has neither AVX-512 nor AVX2: OpenBLAS chooses its own kernels")
    text = output(tmp_path, "-c", "import benchmarks.common, faiss, numpy", OPENBLAS_VERBOSE="2")
    cores = loaded_blas_cores(text)
    assert len(cores) == 2 and set(cores) == {expected}, text
