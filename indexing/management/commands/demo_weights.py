from __future__ import annotations

from typing import Any

import open_clip
from django.conf import settings
from django.core.management.base import BaseCommand

from indexing.embedder import UNTRAINED, WeightsUnavailable
from indexing.runtime import current_embedder
from indexing.weights import DEFAULT_MODEL, DEFAULT_PRETRAINED, air_gap_commands

RULE = "*" * 100
BANNER = """
{rule}
DEMO RUNS ON UNTRAINED (RANDOM) WEIGHTS: similarity results are NOT meaningful.
{reason}

For real CLIP similarity (and ImageNet features for the anomaly check), put the weights here.
{commands}{rule}
"""


def _hint() -> str:
    """The fetch_weights commands for the configured model and tag, or the project's defaults."""
    model, tag = settings.SIMSEARCH_MODEL, settings.SIMSEARCH_PRETRAINED
    if tag not in open_clip.list_pretrained_tags_by_model(model):
        model, tag = DEFAULT_MODEL, DEFAULT_PRETRAINED
    return air_gap_commands(server_dir=str(settings.BASE_DIR / "var" / "weights"), model_name=model, pretrained=tag)


class Command(BaseCommand):
    help = "Print the SIMSEARCH_PRETRAINED value the demo can use: the configured weights, or 'untrained'."

    def handle(self, *args: Any, **options: Any) -> None:
        configured = settings.SIMSEARCH_PRETRAINED
        if configured != UNTRAINED:
            try:
                current_embedder()
            except WeightsUnavailable as exc:
                reason = f"Weights {configured!r} for {settings.SIMSEARCH_MODEL} could not be loaded."
                self.stderr.write(BANNER.format(rule=RULE, reason=reason, commands=_hint()))
                self.stderr.write(f"(cause: {str(exc)[:300]})\n")
                self.stdout.write(UNTRAINED)
                return
            self.stderr.write(f"Using {settings.SIMSEARCH_MODEL} weights {configured}.\n")
            self.stdout.write(configured)
            return
        reason = "SIMSEARCH_PRETRAINED=untrained was set."
        self.stderr.write(BANNER.format(rule=RULE, reason=reason, commands=_hint()))
        self.stdout.write(UNTRAINED)
