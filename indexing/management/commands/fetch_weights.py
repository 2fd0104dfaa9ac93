from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from indexing.weights import (
    DEFAULT_ANOMALY_BACKBONE,
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    NO_ANOMALY_BACKBONE,
    WeightsFetchError,
    fetch_weights,
)


class Command(BaseCommand):
    help = (
        "On a machine with internet: download the CLIP checkpoint (and the anomaly check's ResNet weights) "
        "into --out, verify they load, and print the settings to copy to an air-gapped server."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model", default=DEFAULT_MODEL, help=f"open_clip architecture (default {DEFAULT_MODEL})")
        parser.add_argument(
            "--pretrained", default=DEFAULT_PRETRAINED, help=f"open_clip pretrained tag (default {DEFAULT_PRETRAINED})"
        )
        parser.add_argument(
            "--anomaly-backbone",
            default=DEFAULT_ANOMALY_BACKBONE,
            help=f"ResNet whose ImageNet weights the anomaly check uses (default {DEFAULT_ANOMALY_BACKBONE}); "
            f"'{NO_ANOMALY_BACKBONE}' to skip",
        )
        parser.add_argument("--out", required=True, type=Path, help="folder to write the files into")
        parser.add_argument(
            "--server-dir",
            default=None,
            help="absolute folder the files will be copied to on the server (default: --out's absolute path)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        backbone = options["anomaly_backbone"]
        try:
            result = fetch_weights(
                model_name=options["model"],
                pretrained=options["pretrained"],
                anomaly_backbone=None if backbone == NO_ANOMALY_BACKBONE else backbone,
                out_dir=options["out"],
                server_dir=options["server_dir"],
                log=lambda message: self.stderr.write(message),
            )
        except WeightsFetchError as exc:
            raise CommandError(str(exc)) from exc
        for item in result.files:
            self.stdout.write(f"Wrote {item.path} (sha256 {item.sha256}) from {item.source}")
        self.stdout.write(
            f"\nCopy {', '.join(item.path.name for item in result.files)} to {result.server_dir} on the "
            f"server and set these there (also in {result.env_file}):\n"
        )
        for line in result.settings_lines():
            self.stdout.write(line)
