"""Process start-up: BLAS kernels chosen and idle BLAS threads told not to spin, the cyclic
garbage collector paused.
Django-free.

OpenBLAS (numpy's copy and the one bundled with FAISS) keeps its idle threads spinning for 2**28
cycles, about 0.1 s, after every call. A search or an anomaly check passes the cores from torch
to FAISS to numpy and back every few milliseconds, and the threads still spinning in one library
take the cores from the next: on 2 cores a FAISS patch search (5 ms) followed by the map
smoothing (0.06 ms of numpy) took 28 ms, and one anomaly check of a photo 93 ms instead of 44.
`configure_blas` shortens the spin to 2**12 cycles (OPENBLAS_THREAD_TIMEOUT; large
numpy products still use every core). It has to run before numpy is imported, so `manage.py`,
the WSGI and ASGI modules and the benchmarks call it first; a value set by the operator wins.

It also names the kernels OpenBLAS runs (OPENBLAS_CORETYPE) after the CPU's instruction sets.
FAISS's wheel bundles OpenBLAS 0.3.15, which does not know CPUs newer than itself and then falls
back to its generic SSE3 kernels: on an Intel Xeon of 2024 (Emerald Rapids, AVX-512) FAISS's
exact searches ran 5-6 times slower than the same product in numpy (a leave-one-out search of
1,024 patches against 2,048: 24 ms against 4.7), which made the exact anomaly calibration most
of a model's fit. SkylakeX kernels (AVX-512) or Haswell kernels (AVX2 + FMA), which every CPU
with those instruction sets runs, put both copies on the same footing (4.7 ms).

The collector:
Django's set-up imports torch, torchvision, open_clip and FAISS (the admin imports the index
code): millions of long-lived objects, over which the collector would run many full passes
while they are being made, and which it walks once more when the process exits. `manage.py`
and the WSGI module pause it before set-up; the last app's `ready()` moves everything set-up
made into the permanent generation (`gc.freeze`, which later collections skip) and turns the
collector back on. Measured with `rebuild_index --sync` on 2 cores: about 2 s less before the
command starts and 1.5 s less at exit. It also keeps the forked qcluster workers from
touching (copying) the parent's pages when they collect, as the `gc.freeze` docs advise.
"""

from __future__ import annotations

import gc
import os

BLAS_THREAD_SETTINGS = {"OPENBLAS_THREAD_TIMEOUT": "12"}
# OpenBLAS kernel families, the best first, with the instruction sets each needs.
BLAS_CORE_TYPES = (
    ("SkylakeX", {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}),
    ("Haswell", {"avx2", "fma"}),
)


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The x86 instruction-set flags of this CPU (empty where /proc/cpuinfo has none)."""
    try:
        with open(cpuinfo, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def blas_core_type(flags: set[str]) -> str | None:
    """The OpenBLAS kernel family for a CPU with these flags; None: let OpenBLAS choose."""
    return next((name for name, needed in BLAS_CORE_TYPES if needed <= flags), None)


def configure_blas() -> None:
    for name, value in BLAS_THREAD_SETTINGS.items():
        os.environ.setdefault(name, value)
    core_type = blas_core_type(cpu_flags())
    if core_type:
        os.environ.setdefault("OPENBLAS_CORETYPE", core_type)


def pause_collector() -> None:
    gc.disable()


def resume_collector() -> None:
    """Freeze what set-up made and collect normally from here on (a no-op if never paused)."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()
