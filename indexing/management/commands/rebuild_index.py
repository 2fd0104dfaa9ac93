from __future__ import annotations

import argparse
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from indexing.models import PENDING_STATUSES, BuildStatus, IndexBuild
from indexing.selectors import serving_engine
from indexing.services import index_build_request, index_build_run
from simsearch_project.errors import ServiceError


class Command(BaseCommand):
    help = "Rebuild the similarity indexes (queued to the task queue, or in this process with --sync)."
    # An operator's command whose wall clock is measured (benchmarks/rebuild_throughput.py): the
    # system checks belong to `check` and `migrate`, which every deployment runs first.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--type", dest="index_type", choices=["defect", "normal", "all"], default="all")
        parser.add_argument(
            "--engine",
            choices=["v2", "v1"],
            default=None,
            help="v2 = catalog database, v1 = legacy folder (default: the one USE_INDEX_V2 selects)",
        )
        parser.add_argument("--sync", action="store_true", help="build here instead of in a qcluster worker")
        parser.add_argument("--no-wait", action="store_true", help="queue and return without waiting")
        parser.add_argument(
            "--adapt",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="learn a projection of the embeddings from the catalog's labels, kept only when it helps on "
            "held-out pictures (default: SIMSEARCH_ADAPT)",
        )

    def handle(
        self,
        *args: Any,
        index_type: str,
        engine: str | None,
        sync: bool,
        no_wait: bool,
        adapt: bool | None,
        **options: Any,
    ) -> None:
        engine = engine or serving_engine(settings.USE_INDEX_V2)
        if settings.SIMSEARCH_PRETRAINED == "untrained":
            self.stderr.write(
                self.style.WARNING(
                    "WARNING: SIMSEARCH_PRETRAINED=untrained - random weights, similarity is not meaningful."
                )
            )
        try:
            builds = index_build_request(index_type=index_type, engine=engine, enqueue=not sync, adapt=adapt)
        except ServiceError as exc:
            raise CommandError(exc.message) from exc
        failed = False
        for build in builds:
            if sync and build.status == BuildStatus.QUEUED:
                build = self._run_here(build)
            elif not no_wait:
                build = self._wait(build)
            failed |= self._report(build)
        if failed:
            raise CommandError("At least one build failed; the previously active index keeps serving.")

    def _run_here(self, build: IndexBuild) -> IndexBuild:
        with tqdm(total=0, desc=f"{build.image_type} build {build.pk}", unit="img", file=self.stderr) as bar:

            def show(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            return index_build_run(build_id=build.pk, on_progress=show)

    def _wait(self, build: IndexBuild) -> IndexBuild:
        self.stdout.write(
            f"Waiting for build {build.pk} ({build.image_type}) in the task queue (Ctrl-C stops waiting)."
        )
        self._show_progress(build, until=lambda: False)
        build.refresh_from_db()
        return build

    def _show_progress(self, build: IndexBuild, until: Any) -> None:
        with tqdm(total=0, desc=f"{build.image_type} build {build.pk}", unit="img", file=self.stderr) as bar:
            while True:
                build.refresh_from_db()
                bar.total = build.progress_total
                bar.n = build.progress_done
                bar.set_postfix_str(build.status)
                bar.refresh()
                if build.status not in PENDING_STATUSES or until():
                    break
                time.sleep(0.5)

    def _report(self, build: IndexBuild) -> bool:
        if build.status == BuildStatus.READY:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Build {build.pk} ({build.engine} {build.image_type}) ready and active: "
                    f"{build.vector_count} vectors, {build.embedded_count} embedded, {build.reused_count} reused, "
                    f"{build.missing_count} missing files, "
                    f"{build.timings.get('total_s', 0):.1f} s."
                )
            )
            adaptation = (build.quality or {}).get("adaptation") or {}
            if adaptation.get("requested"):
                self.stdout.write(f"Catalog adaptation: {adaptation.get('reason')}")
            return False
        if build.status == BuildStatus.FAILED:
            self.stderr.write(self.style.ERROR(f"Build {build.pk} ({build.image_type}) failed: {build.error}"))
            return True
        self.stdout.write(f"Build {build.pk} ({build.image_type}) is {build.status}.")
        return False
