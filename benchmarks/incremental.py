"""Incremental rebuild after 1% of a gallery changed, as a fraction of the full rebuild time
(ViT-B-32, untrained weights). Default gallery: 2,000 images.

    .venv/bin/python -m benchmarks.incremental [--images 2000]
"""

from __future__ import annotations

import argparse

from benchmarks.common import Row, Table, part_photo, setup_django


def main(table: Table | None = None, images: int = 2000) -> Table:
    table = table or Table()
    setup_django()
    from catalog.models import DefectType, Image, ImageType, Product
    from catalog.services import UploadedImage, image_delete, images_create
    from indexing.services import index_build_request, index_build_run

    product = Product.objects.create(product_code="bench-inc", product_name="bench")
    scratch = DefectType.objects.create(defect_code="scratch", defect_name_ko="긁힘", defect_name_en="Scratch")
    dent = DefectType.objects.create(defect_code="dent", defect_name_ko="찍힘", defect_name_en="Dent")
    for start in range(0, images, 250):
        images_create(
            uploads=[UploadedImage(f"{i}.jpg", part_photo(i, 160)) for i in range(start, min(start + 250, images))],
            image_type=ImageType.DEFECT,
            product=product,
            defect_type=scratch,
        )

    def build() -> tuple[float, object]:
        (pending,) = index_build_request(index_type="defect", enqueue=False)
        done = index_build_run(build_id=pending.pk)
        assert done.status == "ready", done.error
        return done.timings["total_s"] - done.timings["model_load_s"], done

    full_s, full = build()
    changed = max(images // 100, 1)
    existing = list(Image.objects.order_by("id")[:changed])
    third = max(changed // 3, 1)
    for image in existing[:third]:
        image_delete(image=image)
    Image.objects.filter(pk__in=[i.pk for i in existing[third : 2 * third]]).update(defect_type=dent)
    images_create(
        uploads=[UploadedImage(f"new{i}.jpg", part_photo(10_000_000 + i, 160)) for i in range(changed - 2 * third)],
        image_type=ImageType.DEFECT,
        product=product,
        defect_type=scratch,
    )
    incremental_s, incremental = build()
    table.add(
        Row(
            f"incremental rebuild, 1% of {images} changed",
            f"{incremental_s:.2f} s vs full {full_s:.1f} s ({incremental.embedded_count} embedded, "
            f"{incremental.reused_count} reused)",
            incremental_s / full_s,
            "<= 0.10",
            f"{third} deleted, {third} relabelled, {changed - 2 * third} added; "
            f"full build embedded {full.embedded_count}",
        ),
        Row(
            f"gallery existence check, {incremental.vector_count + incremental.missing_count} images",
            f"{incremental.timings['exists_check_s'] * 1000:.0f} ms in the incremental build, "
            f"{full.timings['exists_check_s'] * 1000:.0f} ms in the full one",
            incremental.timings["exists_check_s"] / incremental_s,
            "<= 0.10",
            "share of the incremental build spent confirming every file is still in storage (local files)",
        ),
    )
    return table


def cli(argv: list[str] | None = None) -> Table:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    return main(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    print(cli().render())
