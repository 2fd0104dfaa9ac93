"""Process start-up: idle BLAS threads told not to spin, the cyclic garbage collector paused.
Django-free.

OpenBLAS (numpy's copy and the one bundled with FAISS) keeps its idle threads spinning for 2**28
cycles, about 0.1 s, after every call. A search or an anomaly check passes the cores from torch
to FAISS to numpy and back every few milliseconds, and the threads still spinning in one library
take the cores from the next: on 2 cores a FAISS patch search (5 ms) followed by the map
smoothing (0.06 ms of numpy) took 28 ms, and one anomaly check of a photo 93 ms instead of 44.
`quiet_idle_blas_threads` shortens the spin to 2**12 cycles (OPENBLAS_THREAD_TIMEOUT; large
numpy products still use every core). It has to run before numpy is imported, so `manage.py`,
the WSGI and ASGI modules and the benchmarks call it first; a value set by the operator wins.

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


def quiet_idle_blas_threads() -> None:
    for name, value in BLAS_THREAD_SETTINGS.items():
        os.environ.setdefault(name, value)


def pause_collector() -> None:
    gc.disable()


def resume_collector() -> None:
    """Freeze what set-up made and collect normally from here on (a no-op if never paused)."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()
