"""HTTP search throughput against the model's limit, idle and while a rebuild runs.

    .venv/bin/python -m benchmarks.http_load [--clients 8] [--seconds 20] [--rounds 3] [--workers 2]

In one run, on one throw-away catalog of 224 px photos, with two servers up side by side:

- *baseline*: today's server before query batching: sync gunicorn workers, one forward pass per
  query (SIMSEARCH_QUERY_BATCH_SIZE=0);
- *batched*: `gunicorn -c python:simsearch_project.gunicorn_conf` (gthread workers, 8 threads each)
  with query batching on (--batch, --wait-ms);

both with `workers` processes x `torch-threads` (default: cores / workers), and a qcluster.

*Bare forward* is the model's limit on this machine: tight loops of forward passes on preprocessed
query-sized batches (--batch images), `workers` processes x `torch-threads` at once like the servers,
and one process with all of those threads; the better is the denominator.

Idle: `rounds` rounds of [bare forward, baseline HTTP, batched HTTP], so that whatever else runs
on the machine falls on all three alike; `clients` threads post photos for `seconds` each. Then,
each beside its own rebuild queued over the API into the qcluster (1 torch thread, every image
embedded again): the bare forward, then each server until 3 s after the rebuild's build is
activated. Ratio = requests/s ÷ the bare forward's images/s under the same conditions. Targets:
ratio >= 0.8, p99 <= 3 x p50, 0 errors.

The load clients run in this process, on the same cores as the servers and the model: their time
is taken from the forward pass too. On a shared machine other people's work moves every figure.

Measured on the project's 2-core machine (AMD EPYC, 2 cores, untrained ViT-B-32; 2026-11-26, nothing
else running; `--clients 8 --seconds 20 --rounds 3`, 2 workers x 1 torch thread, batch 8, 20 ms):

    bare forward, batch 8 (idle)        19.8 img/s (2 x 1), 17.8 img/s (1 x 2)
    baseline (sync, no batching), idle  11.9 req/s  ratio 0.60  p99/p50 1.13  0 errors / 738
    batched (gthread), idle             15.5 req/s  ratio 0.78  p99/p50 1.51  0 errors / 951
    bare forward during a rebuild       10.2 img/s (2 x 1)
    baseline, during rebuild            6.8 req/s   ratio 0.67  p99/p50 1.25  0 errors / 185
    batched, during rebuild             9.3 req/s   ratio 0.91  p99/p50 2.09  0 errors / 239

The idle goal (0.8) is missed by a little; README, Performance, says where the rest goes.

Only 127.0.0.1 is ever contacted; every loop is bounded in time."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

from benchmarks.common import ROOT, Row, Table, part_photo, setup_django

QUERY_SIZE = 224


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
            f"ms, p99 {self.percentile(99):.0f} ms (p99/p50 {self.percentile(99) / self.percentile(50):.2f}), "
            f"{len(self.errors)} errors / {total}"
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
            process.wait(timeout=20)


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


# -- the bare forward ------------------------------------------------------------------------

BARE_CHILD = """
import sys
from benchmarks.http_load import bare_forward_child
bare_forward_child(threads=int(sys.argv[1]), batch=int(sys.argv[2]), seconds=float(sys.argv[3]))
"""


def bare_forward_child(*, threads: int, batch: int, seconds: float) -> None:
    """In a child process: load the model, say "ready", wait for a line on stdin, then run forward
    passes on `batch` preprocessed query photos for `seconds` and print the images/s."""
    import torch

    from indexing.embedder import Embedder

    torch.set_num_threads(threads)
    embedder = Embedder(model_name=os.environ["SIMSEARCH_MODEL"], pretrained="untrained", threads=threads)
    tensors = [embedder.image_tensor(part_photo(100_000 + i, QUERY_SIZE)) for i in range(batch)]
    embedder._forward(tensors)
    print("ready", flush=True)
    sys.stdin.readline()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        embedder._forward(tensors)
        done += batch
    print(f"rate {done / (time.perf_counter() - start)}", flush=True)


def bare_forward(
    *, processes: int, threads: int, batch: int, seconds: float, before_go: Callable[[], None] | None = None
) -> float:
    """Images/s of `processes` bare-forward loops of `threads` torch threads each, run at once
    (after `before_go()`, once every process has loaded the model)."""
    children = [
        subprocess.Popen(
            [sys.executable, "-c", BARE_CHILD, str(threads), str(batch), str(seconds)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(processes)
    ]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        if before_go:
            before_go()
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        total = 0.0
        for child in children:
            out, _ = child.communicate(timeout=seconds * 10 + 120)
            total += float(out.split()[-1])
        return total
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    args: list[str]
    env: dict[str, str]
    notes: str
    base: str = ""


def pooled(results: list[LoadResult]) -> LoadResult:
    total = LoadResult()
    for result in results:
        total.latencies += result.latencies
        total.errors += result.errors
        total.build_ids |= result.build_ids
        total.seconds += result.seconds
    return total


def main(
    table: Table | None = None,
    clients: int = 8,
    seconds: float = 20,
    rounds: int = 3,
    workers: int = 2,
    torch_threads: int | None = None,
    batch: int = 8,
    wait_ms: float = 20,
    images: int = 200,
    baseline: bool = True,
) -> Table:
    table = table or Table()
    torch_threads = torch_threads or max(1, (os.cpu_count() or 2) // workers)
    data_dir = setup_django()
    from django.contrib.auth import get_user_model
    from django.db import connections
    from rest_framework.authtoken.models import Token

    from catalog.models import DefectType, ImageType, Product
    from catalog.services import UploadedImage, images_create
    from indexing.services import index_build_request, index_build_run

    product = Product.objects.create(product_code="bench-http", product_name="bench")
    scratch = DefectType.objects.create(defect_code="scratch", defect_name_ko="긁힘", defect_name_en="Scratch")
    images_create(
        uploads=[UploadedImage(f"{i}.jpg", part_photo(i, QUERY_SIZE)) for i in range(images)],
        image_type=ImageType.DEFECT,
        product=product,
        defect_type=scratch,
    )
    (build,) = index_build_request(index_type="defect", enqueue=False)
    index_build_run(build_id=build.pk)
    staff = get_user_model().objects.create_user("bench", is_staff=True, is_superuser=True)
    token = Token.objects.create(user=staff).key
    connections.close_all()

    env = {
        **os.environ,
        "SIMSEARCH_TORCH_THREADS": str(torch_threads),
        "SIMSEARCH_INDEX_POLL_SECONDS": "1",
        "SIMSEARCH_QUERY_BATCH_SIZE": str(batch),
        "SIMSEARCH_QUERY_BATCH_WAIT_MS": str(wait_ms),
    }
    servers = []
    if baseline:
        servers.append(
            Server(
                "baseline: sync workers, no batching",
                ["--workers", str(workers)],
                {**env, "SIMSEARCH_QUERY_BATCH_SIZE": "0"},
                f"gunicorn x{workers} sync, {torch_threads} torch thread(s) each, one forward pass per query",
            )
        )
    servers.append(
        Server(
            f"batched: gthread, batch {batch}, {wait_ms:g} ms",
            ["-c", "python:simsearch_project.gunicorn_conf", "--workers", str(workers)],
            env,
            f"gunicorn x{workers} gthread x 8 threads, {torch_threads} torch thread(s) each",
        )
    )
    layouts = sorted({(workers, torch_threads), (1, workers * torch_threads)}, reverse=True)
    queries = [part_photo(100_000 + i, QUERY_SIZE) for i in range(16)]
    port = 18000 + os.getpid() % 1000
    processes: list[subprocess.Popen] = []
    try:
        for number, server in enumerate(servers):
            server.base = f"http://127.0.0.1:{port + number}"
            bind = ["--bind", f"127.0.0.1:{port + number}", "--timeout", "120"]
            processes.append(
                start_process(
                    [sys.executable, "-m", "gunicorn", "simsearch_project.wsgi:application", *server.args, *bind],
                    data_dir / f"gunicorn-{number}.log",
                    server.env,
                )
            )
        processes.append(
            start_process(
                [sys.executable, "manage.py", "qcluster"],
                data_dir / "qcluster.log",
                {**env, "SIMSEARCH_TORCH_THREADS": "1"},
            )
        )
        for server in servers:
            wait_healthy(server.base)
            run_load(server.base, token, clients=clients, seconds=5, queries=queries)  # every worker loads the model

        # Idle: rounds of bare forward, then each server, so that whatever else the machine does
        # falls on all of them alike.
        bare_rates: dict[tuple[int, int], list[float]] = {layout: [] for layout in layouts}
        idle_runs: dict[str, list[LoadResult]] = {server.name: [] for server in servers}
        round_ratios: dict[str, list[float]] = {server.name: [] for server in servers}
        for _ in range(rounds):
            for layout in layouts:
                rate = bare_forward(processes=layout[0], threads=layout[1], batch=batch, seconds=seconds / 2)
                bare_rates[layout].append(rate)
            limit = max(rates[-1] for rates in bare_rates.values())
            for server in servers:
                result = run_load(server.base, token, clients=clients, seconds=seconds, queries=queries)
                idle_runs[server.name].append(result)
                round_ratios[server.name].append(result.requests_per_second / limit)
        best = max(layouts, key=lambda layout: float(np.mean(bare_rates[layout])))
        bare_idle = float(np.mean(bare_rates[best]))
        table.add(
            Row(
                f"bare forward, batch {batch} (idle)",
                ", ".join(f"{np.mean(bare_rates[layout]):.1f} img/s ({layout[0]} x {layout[1]})" for layout in layouts),
                None,
                "",
                f"the model's limit: processes x torch threads, the better is the denominator; "
                f"preprocessed {QUERY_SIZE} px query tensors; mean of {rounds} rounds of {seconds / 2:g} s",
            )
        )
        for server in servers:
            idle = pooled(idle_runs[server.name])
            ratios = round_ratios[server.name]
            table.add(
                Row(
                    f"HTTP search, {clients} clients, {server.name} (idle)",
                    idle.summary(),
                    idle.requests_per_second / bare_idle,
                    ">= 0.8, p99 <= 3 x p50, 0 errors",
                    f"÷ bare forward {bare_idle:.1f} img/s; rounds {min(ratios):.2f}–{max(ratios):.2f}; "
                    f"{server.notes}; {images}-image index; {rounds} x {seconds:g} s",
                )
            )

        # During a rebuild (each its own, in the qcluster with 1 torch thread): the bare forward,
        # then each server.
        bare_busy, throughout = bare_during_rebuild(
            servers[0].base, token, layout=best, batch=batch, seconds=seconds / 2
        )
        table.add(
            Row(
                f"bare forward, batch {batch}, during a rebuild",
                f"{bare_busy:.1f} img/s ({best[0]} x {best[1]})",
                None,
                "",
                "beside a rebuild of the index in the qcluster (1 torch thread)"
                + ("" if throughout else "; the rebuild ended before the measurement did"),
            )
        )
        for server in servers:
            busy, final, old = during_rebuild(server.base, token, clients=clients, seconds=seconds, queries=queries)
            table.add(
                Row(
                    f"HTTP search, {clients} clients, {server.name}, during rebuild + activation",
                    busy.summary(),
                    busy.requests_per_second / bare_busy,
                    ">= 0.8, p99 <= 3 x p50, 0 errors",
                    f"÷ bare forward during a rebuild {bare_busy:.1f} img/s; build {final.pk} {final.status}; "
                    f"answered by builds {sorted(busy.build_ids)} (old {old})",
                )
            )
    finally:
        for process in processes:
            stop(process)
    return table


def queue_rebuild(base: str, token: str) -> tuple[int, int]:
    """(new build id, active build id) after queueing a rebuild that embeds every image again."""
    from django.db import connections

    from indexing.models import CachedEmbedding, IndexBuild

    old = IndexBuild.objects.get(image_type="defect", engine="v2", is_active=True).pk
    CachedEmbedding.objects.all().delete()
    connections.close_all()
    response = requests.post(
        f"{base}/api/index/rebuild/",
        data={"index_type": "defect"},
        headers={"Authorization": f"Token {token}"},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    return response.json()["builds"][0]["id"], old


def wait_finished(build_id: int, timeout: float) -> None:
    from indexing.models import IndexBuild

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if IndexBuild.objects.filter(pk=build_id, status__in=["ready", "failed"]).exists():
            return
        time.sleep(0.5)


def bare_during_rebuild(base: str, token: str, *, layout: tuple[int, int], batch: int, seconds: float):  # type: ignore[no-untyped-def]
    """The bare forward's images/s while a queued rebuild embeds, and whether it ran throughout."""
    from indexing.models import IndexBuild

    new_id = 0

    def embedding() -> None:  # once the bare-forward processes have loaded the model
        nonlocal new_id
        new_id, _ = queue_rebuild(base, token)
        deadline = time.monotonic() + 120
        while not IndexBuild.objects.filter(pk=new_id, status="running", progress_done__gt=0).exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the rebuild did not start embedding")
            time.sleep(0.2)

    rate = bare_forward(processes=layout[0], threads=layout[1], batch=batch, seconds=seconds, before_go=embedding)
    throughout = IndexBuild.objects.filter(pk=new_id, status="running").exists()
    wait_finished(new_id, timeout=seconds * 40)
    return rate, throughout


def during_rebuild(base: str, token: str, *, clients: int, seconds: float, queries: list[bytes]):  # type: ignore[no-untyped-def]
    """Load while a rebuild queued over the API runs in the qcluster, until 3 s after it ends."""
    from indexing.models import IndexBuild

    new_id, old = queue_rebuild(base, token)
    done = threading.Event()

    def watch() -> None:
        wait_finished(new_id, timeout=seconds * 10)
        time.sleep(3)  # keep loading across the swap
        done.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    busy = run_load(base, token, clients=clients, seconds=seconds, queries=queries, during=done)
    watcher.join()
    return busy, IndexBuild.objects.get(pk=new_id), old


def cli(argv: list[str] | None = None) -> Table:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20, help="per idle round and server")
    parser.add_argument("--rounds", type=int, default=3, help="idle rounds of bare forward, baseline, batched")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--torch-threads", type=int, help="per worker; default: cores / workers")
    parser.add_argument("--batch", type=int, default=8, help="SIMSEARCH_QUERY_BATCH_SIZE of the batched server")
    parser.add_argument("--wait-ms", type=float, default=20, help="SIMSEARCH_QUERY_BATCH_WAIT_MS")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--no-baseline", dest="baseline", action="store_false")
    return main(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    print(cli().render())
