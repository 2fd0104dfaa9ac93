"""A rebuild spread over task-queue workers (indexing/services.py `_embed_in_chunks`): images per
second from the rebuild request to the active build, with one qcluster worker process and with
two, on the same machine, gallery and chunk size (ViT-B-32, untrained weights).

    .venv/bin/python -m benchmarks.distributed_build [--images 192] [--chunk 32]

Each worker process gets an equal share of the cores (torch threads = cores / workers), as
several processes on one host should; on a 2-core machine two workers therefore cannot beat one
by much: the figure shows that splitting costs little. Workers on more hosts (or GPUs) add their
throughput: every qcluster on the broker takes chunks of a running build.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT, Row, Table, Timer, part_photo, setup_django


def _cluster(workers: int, chunk: int, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "SIMSEARCH_QUEUE_WORKERS": str(workers),
        "SIMSEARCH_TORCH_THREADS": str(max(1, (os.cpu_count() or 2) // workers)),
        "SIMSEARCH_BUILD_CHUNK_SIZE": str(chunk),
        "SIMSEARCH_LOG_LEVEL": "INFO",
    }
    process = subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while " running." not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"qcluster did not start: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)
    return process


def main(table: Table | None = None, images: int = 192, chunk: int = 32, size: int = 512) -> Table:
    table = table or Table()
    data_dir = setup_django()
    from django.db import transaction

    from catalog.models import DefectType, ImageType, Product
    from catalog.services import UploadedImage, images_create
    from indexing.models import BuildStatus, CachedEmbedding, IndexBuild
    from indexing.services import index_build_request

    product = Product.objects.create(product_code="bench-dist", product_name="bench")
    defect = DefectType.objects.create(defect_code="bench", defect_name_ko="벤치", defect_name_en="bench")
    images_create(
        uploads=[UploadedImage(f"{i}.jpg", part_photo(i, size)) for i in range(images)],
        image_type=ImageType.DEFECT,
        product=product,
        defect_type=defect,
    )
    rates = {}
    for workers in (1, 2):
        CachedEmbedding.objects.all().delete()
        cluster = _cluster(workers, chunk, Path(data_dir) / f"qcluster-{workers}.log")
        try:
            with Timer() as timer:
                with transaction.atomic():
                    (build,) = index_build_request(index_type="defect")
                while IndexBuild.objects.get(pk=build.pk).status in (BuildStatus.QUEUED, BuildStatus.RUNNING):
                    time.sleep(0.2)
            build.refresh_from_db()
            assert build.status == BuildStatus.READY, build.error
        finally:
            cluster.terminate()
            cluster.wait(timeout=30)
        rates[workers] = images / timer.seconds
        table.add(
            Row(
                f"distributed rebuild, {workers} worker process{'es' if workers > 1 else ''}",
                f"{rates[workers]:.1f} img/s ({timer.seconds:.1f} s)",
                rates[workers] / rates[1],
                "" if workers == 1 else "~1 on 2 cores; adds up across hosts",
                f"{images} images {size} px, chunks of {chunk}, {build.timings.get('chunks')} chunks taken by "
                f"{len(build.timings.get('chunk_workers', []))} processes; request to active, model load included",
            )
        )
    return table


def cli(argv: list[str] | None = None) -> Table:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--chunk", type=int, default=32)
    return main(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    print(cli().render())
