from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from indexing.embedder import UNTRAINED, Embedder, WeightsUnavailable

BANNER = """
************************************************************************************
*  DEMO RUNS ON UNTRAINED (RANDOM) WEIGHTS: similarity results are NOT meaningful.  *
*  {reason:<80}*
*  For real CLIP similarity: on a machine with internet run                         *
*    .venv/bin/python -c "import open_clip; open_clip.create_model_and_transforms(  *
*        'ViT-B-32', pretrained='laion2b_s34b_b79k')"                                *
*  (it caches the weights), or copy a checkpoint file here and set                  *
*  SIMSEARCH_PRETRAINED=/path/to/checkpoint, then run `make demo` again.            *
************************************************************************************
"""


class Command(BaseCommand):
    help = "Print the SIMSEARCH_PRETRAINED value the demo can use: the configured weights, or 'untrained'."

    def handle(self, *args: Any, **options: Any) -> None:
        configured = settings.SIMSEARCH_PRETRAINED
        if configured != UNTRAINED:
            try:
                Embedder(model_name=settings.SIMSEARCH_MODEL, pretrained=configured)
            except WeightsUnavailable as exc:
                reason = f"Weights {configured!r} for {settings.SIMSEARCH_MODEL} could not be loaded."
                self.stderr.write(BANNER.format(reason=reason[:80]))
                self.stderr.write(f"(cause: {str(exc)[:300]})\n")
                self.stdout.write(UNTRAINED)
                return
            self.stderr.write(f"Using {settings.SIMSEARCH_MODEL} weights {configured}.\n")
            self.stdout.write(configured)
            return
        self.stderr.write(BANNER.format(reason="SIMSEARCH_PRETRAINED=untrained was set."))
        self.stdout.write(UNTRAINED)
