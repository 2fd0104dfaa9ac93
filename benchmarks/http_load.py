"""HTTP load against gunicorn: N concurrent clients for a bounded time, once idle and once
while a rebuild runs and its build is activated. Reports requests/s, p50/p95/p99, errors.

    .venv/bin/python -m benchmarks.http_load [--clients 8] [--seconds 20] [--workers 2]

Only 127.0.0.1 is ever contacted; every loop is bounded in time."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

from benchmarks.common import ROOT, Row, Table, part_photo, setup_django


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    build_ids: set[int] = field(default_factory=set)
    seconds: float = 0.0

    @property
    def requests_per_second(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")

    def summary(self) -> str:
        total = len(self.latencies) + len(self.errors)
        return (
            f"{self.requests_per_second:.1f} req/s, p50 {self.percentile(50):.0f} ms, p95 {self.percentile(95):.0f} "
            f"ms, p99 {self.percentile(99):.0f} ms, {len(self.errors)} errors / {total}"
        )


def run_load(
    base: str, token: str, *, clients: int, seconds: float, queries: list[bytes], during: threading.Event | None = None
) -> LoadResult:
    """`clients` threads post searches for `seconds` (or until `during` is set, at most 10x)."""
    result = LoadResult()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    hard_stop = time.monotonic() + seconds * 10

    def keep_going() -> bool:
        now = time.monotonic()
        if during is not None:
            return not during.is_set() and now < hard_stop
        return now < deadline

    def client(number: int) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Token {token}"
        i = number
        while keep_going():
            photo = queries[i % len(queries)]
            i += clients
            start = time.perf_counter()
            try:
                response = session.post(
                    f"{base}/api/search/similarity/", files={"image": ("q.jpg", photo)}, data={"top_k": "5"}, timeout=60
                )
                elapsed = time.perf_counter() - start
                with lock:
                    if response.status_code == 200:
                        result.latencies.append(elapsed)
                        result.build_ids.add(response.json()["index"]["build_id"])
                    else:
                        result.errors.append(f"{response.status_code}: {response.text[:200]}")
            except requests.RequestException as exc:
                with lock:
                    result.errors.append(repr(exc))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.monotonic() - started
    return result


def start_process(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "wb") as handle:
        return subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def wait_healthy(base: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/readyz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{base} did not become ready")


def main(
    table: Table | None = None, clients: int = 8, seconds: float = 20, workers: int = 2, images: int = 200
) -> Table:
    table = table or Table()
    data_dir = setup_django()
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from catalog.models import DefectType, ImageType, Product
    from catalog.services import UploadedImage, images_create
    from indexing.models import CachedEmbedding, IndexBuild
    from indexing.services import index_build_request, index_build_run

    product = Product.objects.create(product_code="bench-http", product_name="bench")
    scratch = DefectType.objects.create(defect_code="scratch", defect_name_ko="긁힘", defect_name_en="Scratch")
    images_create(
        uploads=[UploadedImage(f"{i}.jpg", part_photo(i, 224)) for i in range(images)],
        image_type=ImageType.DEFECT,
        product=product,
        defect_type=scratch,
    )
    (build,) = index_build_request(index_type="defect", enqueue=False)
    first = index_build_run(build_id=build.pk)
    staff = get_user_model().objects.create_user("bench", is_staff=True, is_superuser=True)
    token = Token.objects.create(user=staff).key
    from django.db import connections

    connections.close_all()

    port = 18000 + os.getpid() % 1000
    base = f"http://127.0.0.1:{port}"
    threads = max(1, (os.cpu_count() or 2) // workers)
    env = {**os.environ, "SIMSEARCH_TORCH_THREADS": str(threads), "SIMSEARCH_INDEX_POLL_SECONDS": "1"}
    server = start_process(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "simsearch_project.wsgi:application",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--timeout",
            "120",
        ],
        data_dir / "gunicorn.log",
        env,
    )
    queue = start_process(
        [sys.executable, "manage.py", "qcluster"], data_dir / "qcluster.log", {**env, "SIMSEARCH_TORCH_THREADS": "1"}
    )
    try:
        wait_healthy(base)
        queries = [part_photo(100_000 + i, 224) for i in range(16)]
        run_load(base, token, clients=2, seconds=3, queries=queries)  # warm-up: every worker loads the model
        idle = run_load(base, token, clients=clients, seconds=seconds, queries=queries)
        table.add(
            Row(
                f"HTTP search, {clients} clients, gunicorn x{workers} (idle)",
                idle.summary(),
                None,
                "0 errors",
                f"{workers} workers x {threads} torch threads, {images}-image index",
            )
        )

        CachedEmbedding.objects.all().delete()  # make the rebuild embed everything again
        response = requests.post(
            f"{base}/api/index/rebuild/",
            data={"index_type": "defect"},
            headers={"Authorization": f"Token {token}"},
            timeout=30,
        )
        assert response.status_code == 202, response.text
        new_id = response.json()["builds"][0]["id"]
        done = threading.Event()

        def watch() -> None:
            deadline = time.monotonic() + seconds * 10
            while time.monotonic() < deadline:
                if IndexBuild.objects.filter(pk=new_id, status__in=["ready", "failed"]).exists():
                    time.sleep(3)  # keep loading across the swap
                    break
                time.sleep(0.5)
            done.set()

        watcher = threading.Thread(target=watch)
        watcher.start()
        busy = run_load(base, token, clients=clients, seconds=seconds, queries=queries, during=done)
        watcher.join()
        final = IndexBuild.objects.get(pk=new_id)
        table.add(
            Row(
                f"HTTP search, {clients} clients, during rebuild + activation",
                busy.summary(),
                None,
                "0 errors",
                f"build {final.pk} {final.status}; answered by builds {sorted(busy.build_ids)} (old {first.pk})",
            )
        )
    finally:
        stop(server)
        stop(queue)
    return table


def cli(argv: list[str] | None = None) -> Table:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--images", type=int, default=200)
    return main(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    print(cli().render())
