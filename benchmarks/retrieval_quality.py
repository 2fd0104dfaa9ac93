"""Retrieval quality on a labelled generated catalog with held-out queries: whole-photo search,
defect-focused search (indexing/focus.py), catalog adaptation (indexing/adaptation.py) and the
calibrated "no match" (indexing/calibration.py).

    .venv/bin/python -m benchmarks.retrieval_quality [--catalog 12] [--queries 4] [--normals 20]

Two products (a brushed plate and a gear, benchmarks/anomaly_quality.py's generator) with four
defect types each in the catalog and a fifth ("stain") kept out of it; per product an anomaly
model is fitted on its normal photos, and the catalog's defect photos are described by their
most anomalous patches. Held-out photos (other seeds) are the queries. Whole-photo search: the
ViT-B-32 embedding (untrained weights), FAISS cosine. Defect-focused search: the query described
against the normal images of the product of its best whole-photo match (what the API does
without product_code), then FAISS cosine over the catalog's descriptors. Reported: top-1 defect
type and top-1 product, each with its chance level (the expected accuracy of a random catalog
image: the sum of squared class shares); the same whole-photo search after the catalog
adaptation a build would learn (and whether the build's held-out check keeps it); its training
time on 10,000 synthetic embeddings; the share of held-out photos whose match is confident, and
the "no match" rate on the type kept out.

Untrained weights on generated parts: these figures compare the searches on this machine; they
say nothing of what pretrained CLIP / ImageNet weights reach on a plant's photos. Measured (2
cores, 2026-11-26, about 60 s): defect type top-1 whole photo 0.22 vs defect region 0.41
(chance 0.22), product 1.00 / 1.00; adaptation not kept by the build's own held-out check
(within chance); adaptation training on 10,000 x 512-d synthetic embeddings 5.4 s; at
precision 0.9 no answer of the untrained model is confident, so the unseen type's photos all
get "no match"."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable

import numpy as np

from benchmarks.anomaly_quality import GEAR_DEFECTS, PLATE_DEFECTS, make_sample
from benchmarks.common import Row, Table, Timer

PHOTO_SIZE = (320, 240)
NOVEL = "stain"  # a defect type the catalog does not have


def chance(labels: list[str]) -> float:
    counts = Counter(labels)
    return sum((n / len(labels)) ** 2 for n in counts.values())


def main(
    table: Table | None = None,
    catalog: int = 12,
    queries: int = 4,
    normals: int = 20,
    log: Callable[[str], None] = print,
) -> Table:
    table = table or Table()
    import torch

    from indexing.anomaly import PatchFeatureExtractor, fit_anomaly_model
    from indexing.embedder import UNTRAINED, Embedder
    from indexing.focus import FOCUS_PATCHES, FocusDescriptors, defect_region
    from indexing.vector_index import build_index, search

    torch.manual_seed(0)
    started = time.perf_counter()
    extractor = PatchFeatureExtractor()
    embedder = Embedder(model_name="ViT-B-32", pretrained=UNTRAINED)
    models, rows, held_out = {}, [], []
    for p, (product, kinds) in enumerate((("plate", PLATE_DEFECTS), ("gear", GEAR_DEFECTS))):
        normal_photos = [make_sample(product, 1000 * p + i, PHOTO_SIZE).photo for i in range(normals)]
        models[product] = fit_anomaly_model(
            extractor.extract(normal_photos), feature_fingerprint=extractor.fingerprint, input_size=extractor.input_size
        )
        for k, kind in enumerate(kinds):
            if kind == NOVEL:  # kept out of the catalog: the "no match" queries
                continue
            for j in range(catalog + queries):
                photo = make_sample(product, 50_000 + 1000 * p + 100 * k + j, PHOTO_SIZE, kind).photo
                (held_out if j >= catalog else rows).append((product, kind, photo))
    log(f"generated {len(rows)} catalog and {len(held_out)} query photos in {time.perf_counter() - started:.0f} s")

    def embed(items: list[tuple[str, str, bytes]]) -> np.ndarray:
        return embedder.encode_images([(lambda b=b: b) for _, _, b in items], batch_size=16).vectors

    ids = np.arange(len(rows))
    catalog_vectors = embed(rows)
    whole_index = build_index(catalog_vectors, ids)
    regions = [defect_region(models[product], extractor.extract([photo])[0]) for product, _, photo in rows]
    focus = FocusDescriptors.from_regions(
        ids.tolist(), regions, patches=FOCUS_PATCHES, feature_fingerprint=extractor.fingerprint
    )
    whole_hits, focus_hits = [], []
    for vector, (_, _, photo) in zip(embed(held_out), held_out, strict=True):
        best = search(whole_index, vector, 1)[0][0]
        whole_hits.append(best)
        product = rows[best][0]
        region = defect_region(models[product], extractor.extract([photo])[0])
        focus_hits.append(focus.search(region, 1)[0][0])

    # Calibrated "no match" (indexing/calibration.py): one defect type the catalog does not have.
    from indexing.calibration import calibrate_records

    records = [
        {"image_id": i, "defect_code": kind, "product_code": product, "sha256": f"picture-{i}"}
        for i, (product, kind, _) in enumerate(rows)
    ]
    calibration = calibrate_records(catalog_vectors, records, engine="v2", image_type="defect")
    region_calibration = calibrate_records(focus.centred(focus.descriptors), records, engine="v2", image_type="defect")
    novel = [
        (product, NOVEL, make_sample(product, 90_000 + 100 * p + j, PHOTO_SIZE, NOVEL).photo)
        for p, product in enumerate(("plate", "gear"))
        for j in range(queries)
    ]
    known_confident, novel_rejected = [], []
    for items, sink in ((held_out, known_confident), (novel, novel_rejected)):
        for vector, (_, _, photo) in zip(embed(items), items, strict=True):
            hits = search(whole_index, vector, 1)
            best, score = hits[0]
            region = defect_region(models[rows[best][0]], extractor.extract([photo])[0])
            region_best, region_score = focus.search(region, 1)[0]
            whole_ok = calibration.assess(rows[best][1], score).confident
            region_ok = region_calibration.assess(rows[region_best][1], region_score).confident
            sink.append((whole_ok, region_ok) if sink is known_confident else (not whole_ok, not region_ok))

    # Catalog adaptation (indexing/adaptation.py), learnt from the catalog's defect types.
    from indexing.adaptation import fit_adaptation

    adaptation = fit_adaptation(catalog_vectors, [kind for _, kind, _ in rows], [r["sha256"] for r in records])
    adapted_hits = whole_hits
    if adaptation.projection is not None:
        adapted_index = build_index(adaptation.projection.apply(catalog_vectors), ids)
        query_vectors = adaptation.projection.apply(embed(held_out))
        adapted_hits = [search(adapted_index, vector, 1)[0][0] for vector in query_vectors]
    rng = np.random.default_rng(0)
    centres, types = rng.normal(size=(10, 512)), rng.normal(size=(20, 512))
    product_of, type_of = rng.integers(0, 10, 10_000), rng.integers(0, 20, 10_000)
    synthetic = centres[product_of] + 0.25 * types[type_of] + 0.8 * rng.normal(size=(10_000, 512))
    synthetic = (synthetic / np.linalg.norm(synthetic, axis=1, keepdims=True)).astype(np.float32)
    with Timer() as training:
        large = fit_adaptation(synthetic, [f"t{t}" for t in type_of], [f"s{i}" for i in range(10_000)])

    def accuracy(hits: list[int], column: int) -> float:
        return float(np.mean([rows[h][column] == q[column] for h, q in zip(hits, held_out, strict=True)]))

    details = f"{len(rows)} catalog + {len(held_out)} held-out photos, 2 products x 4 defect types, untrained weights"

    def share(pairs: list[tuple[bool, bool]], column: int) -> float:
        return float(np.mean([pair[column] for pair in pairs]))

    defect_chance = chance([kind for _, kind, _ in rows])
    product_chance = chance([product for product, _, _ in rows])
    table.add(
        Row(
            "retrieval: defect type top-1, whole photo",
            f"{accuracy(whole_hits, 1):.2f}",
            None,
            "",
            f"chance {defect_chance:.2f}; {details}",
        ),
        Row(
            "retrieval: defect type top-1, defect region",
            f"{accuracy(focus_hits, 1):.2f}",
            accuracy(focus_hits, 1) / max(accuracy(whole_hits, 1), 1e-9),
            "> whole",
            f"chance {defect_chance:.2f}; product from the best whole-photo match; ratio = region / whole",
        ),
        Row(
            "retrieval: product top-1, whole photo / defect region",
            f"{accuracy(whole_hits, 0):.2f} / {accuracy(focus_hits, 0):.2f}",
            None,
            "",
            f"chance {product_chance:.2f}",
        ),
        Row(
            "retrieval: defect type top-1, whole photo adapted to the catalog",
            f"{accuracy(adapted_hits, 1):.2f} ({'kept' if adaptation.projection else 'not kept'})",
            None,
            "",
            f"base {accuracy(whole_hits, 1):.2f}; build's held-out check: {adaptation.reason}",
        ),
        Row(
            "retrieval: adaptation training time, 10,000 images",
            f"{training.seconds:.1f} s",
            training.seconds / 60,
            "<= 1 (60 s)",
            f"512-d synthetic embeddings, 20 types, 5 folds x 4 alphas; {large.reason}",
        ),
        Row(
            "retrieval: confident matches, known types, whole photo / defect region",
            f"{share(known_confident, 0):.2f} / {share(known_confident, 1):.2f}",
            None,
            "",
            "held-out photos of types in the catalog whose top match clears its type's threshold (precision 0.9)",
        ),
        Row(
            f"retrieval: 'no match' rate, a type not in the catalog ({NOVEL}), whole photo / defect region",
            f"{share(novel_rejected, 0):.2f} / {share(novel_rejected, 1):.2f}",
            None,
            "high",
            f"{len(novel)} photos: no_confident_match would be true",
        ),
    )
    log(f"total {time.perf_counter() - started:.0f} s")
    return table


def cli(argv: list[str] | None = None) -> Table:
    parser = argparse.ArgumentParser()
    parser.add_argument("--catalog", type=int, default=12, help="catalog photos per product and defect type")
    parser.add_argument("--queries", type=int, default=4, help="held-out query photos per product and defect type")
    parser.add_argument("--normals", type=int, default=20, help="normal photos per product (anomaly model)")
    return main(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    print(cli().render())
