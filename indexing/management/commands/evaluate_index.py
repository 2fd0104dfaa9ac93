from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from indexing.artifacts import ArtifactError
from indexing.evaluation import build_evaluate, build_evaluate_folder, build_to_evaluate
from indexing.selectors import serving_engine
from simsearch_project.errors import ServiceError

LABEL_NAMES = {"defect_type": "Defect type", "product": "Product"}
FIGURES = [
    ("top1_accuracy", "top-1 accuracy", "a random neighbour"),
    ("top5_vote_accuracy", "top-5 vote accuracy", "a vote of 5 random neighbours"),
    ("map_at_10", "mAP@10", "a random ranking"),
]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


class Command(BaseCommand):
    help = (
        "Print the retrieval quality of the active (or a given) index build: leave-one-out over its own "
        "vectors, or with --queries on a held-out folder of <product>_<defect>_<anything>.<ext> photos."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--build", type=int, default=None, help="build id (default: the active build)")
        parser.add_argument("--type", dest="image_type", choices=["defect", "normal"], default="defect")
        parser.add_argument(
            "--engine", choices=["v2", "v1"], default=None, help="default: the one USE_INDEX_V2 selects"
        )
        parser.add_argument("--queries", type=Path, default=None, help="folder of labelled held-out photos")
        parser.add_argument("--json", dest="as_json", action="store_true", help="print the figures as JSON")

    def handle(
        self,
        *args: Any,
        build: int | None,
        image_type: str,
        engine: str | None,
        queries: Path | None,
        as_json: bool,
        **options: Any,
    ) -> None:
        if queries is not None and not queries.is_dir():
            raise CommandError(f"{queries} is not a folder.")
        try:
            target = build_to_evaluate(
                build_id=build, image_type=image_type, engine=engine or serving_engine(settings.USE_INDEX_V2)
            )
            if queries is None:
                quality, skipped = build_evaluate(build=target), []
            else:
                result = build_evaluate_folder(build=target, folder=queries)
                quality, skipped = result.quality, result.skipped
        except ServiceError as exc:
            raise CommandError(exc.message) from exc
        except (ArtifactError, OSError) as exc:  # the build's files gone or altered, storage down
            raise CommandError(f"Could not read the index files: {exc}") from exc
        if as_json:
            body = {"build_id": target.pk, "quality": quality, "skipped": skipped}
            self.stdout.write(json.dumps(body, ensure_ascii=False, indent=2))
            return
        how = (
            "leave-one-out over its own vectors"
            if quality["mode"] == "leave_one_out"
            else f"held-out photos in {queries}"
        )
        sample = f" (a seeded sample, seed {quality['sample_seed']})" if quality["sampled"] else ""
        self.stdout.write(
            f"Build {target.pk} ({target.engine} {target.image_type}), {how}: "
            f"{quality['query_count']} queries{sample} against {quality['vector_count']} vectors."
        )
        for name, reason in skipped:
            self.stdout.write(f"  skipped {name}: {reason}")
        for label, block in quality["labels"].items():
            self._label(label, block, main=label == quality["main_label"])

    def _label(self, label: str, block: dict[str, Any], *, main: bool) -> None:
        title = LABEL_NAMES.get(label, label) + (" (main figure)" if main else "")
        self.stdout.write(f"\n{title}: {block['queries']} queries, {block['classes']} classes")
        for key, name, chance in FIGURES:
            figure = block[key]
            self.stdout.write(
                f"  {name:<22}{_percent(figure['value']):>8}   chance {_percent(figure['chance']):>7} ({chance})"
            )
        majority = block["majority_class"]
        self.stdout.write(
            f"  {'majority class rate':<22}{_percent(majority['rate']):>8}   (always answering {majority['label']})"
        )
        self.stdout.write("  recall per class:")
        width = max([len(row["label"]) for row in block["per_class"]] + [5])
        for row in block["per_class"]:
            self.stdout.write(
                f"    {row['label']:<{width}}  {row['queries']:>5} queries  {_percent(row['recall']):>7}"
                f"   chance {_percent(row['chance']):>7}"
            )
        labels, matrix = block["confusion"]["labels"], block["confusion"]["matrix"]
        self.stdout.write("  confusion (rows: true class, columns: class of the nearest neighbour):")
        cell = max([len(str(n)) for row in matrix for n in row] + [len(x) for x in labels] + [3])
        self.stdout.write("    " + " " * width + "  " + " ".join(f"{x:>{cell}}" for x in labels))
        for name, row in zip(labels, matrix, strict=True):
            self.stdout.write(f"    {name:<{width}}  " + " ".join(f"{n:>{cell}}" for n in row))
