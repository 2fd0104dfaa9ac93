"""Query batching through the real stack: gunicorn with the production config's threads, the
search API and the model, concurrent clients against sequential ones."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
from rest_framework.authtoken.models import Token

from tests.conftest import ROOT, running_gunicorn
from tests.helpers import image_bytes, wait_until
from tests.indexing.conftest import add_images, build_now

pytestmark = pytest.mark.django_db(transaction=True)


def search(base: str, token: str, photo: bytes) -> list[tuple[int, float]]:
    response = requests.post(
        f"{base}/api/search/similarity/",
        headers={"Authorization": f"Token {token}"},
        files={"image": ("q.jpg", photo)},
        data={"top_k": "5"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return [(hit["image_id"], hit["similarity_score"]) for hit in response.json()["results"]]


def test_concurrent_searches_in_one_threaded_process_match_sequential_ones(
    tmp_path: Path, django_user_model, product, scratch
) -> None:  # type: ignore[no-untyped-def]
    add_images(product, scratch, 20)
    assert build_now().status == "ready"
    staff = django_user_model.objects.create_user("lead", is_staff=True, is_superuser=True)
    token = Token.objects.create(user=staff).key
    queries = [image_bytes(seed=900 + i, size=(80, 60)) for i in range(8)]
    log = tmp_path / "gunicorn.log"
    env = {
        # The production config (gthread, 8 threads); the command line keeps one worker, so that
        # every concurrent search reaches the same batcher.
        "GUNICORN_CMD_ARGS": "-c python:simsearch_project.gunicorn_conf",
        "SIMSEARCH_QUERY_BATCH_SIZE": "8",
        "SIMSEARCH_QUERY_BATCH_WAIT_MS": "150",
        "SIMSEARCH_LOG_LEVEL": "DEBUG",
    }
    with running_gunicorn(log, workers=1, **env) as base:
        sequential = [search(base, token, photo) for photo in queries]
        rounds: list[dict[int, list[tuple[int, float]]]] = []
        for _ in range(3):
            found: dict[int, list[tuple[int, float]]] = {}
            barrier = threading.Barrier(len(queries))

            def client(i: int, found: dict = found, barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                found[i] = search(base, token, queries[i])

            threads = [threading.Thread(target=client, args=(i,)) for i in range(len(queries))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
            rounds.append(found)

    # Different photos get different answers, so a row handed to the wrong caller would show.
    assert len({tuple(score for _, score in hits) for hits in sequential}) == len(queries)
    for found in rounds:
        assert sorted(found) == list(range(len(queries)))
        for i, hits in found.items():
            assert [image_id for image_id, _ in hits] == [image_id for image_id, _ in sequential[i]], i
            assert [score for _, score in hits] == pytest.approx([score for _, score in sequential[i]], abs=1e-4)
    sizes = [int(size) for size in re.findall(r"Embedding a batch of (\d+) queries", log.read_text(errors="replace"))]
    assert sizes.count(1) >= len(queries)  # the sequential searches, one by one
    assert max(sizes) > 1, "concurrent searches were never embedded together"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SIMSEARCH_QUERY_BATCH_SIZE", "-1"),
        ("SIMSEARCH_QUERY_BATCH_SIZE", "many"),
        ("SIMSEARCH_QUERY_BATCH_WAIT_MS", "soon"),
        ("SIMSEARCH_QUERY_BATCH_WAIT_MS", "5000"),
    ],
)
def test_bad_batching_settings_stop_the_server_naming_the_setting(tmp_path: Path, name: str, value: str) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SIMSEARCH_", "AWS_"))}
    clean.pop("DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={
            **clean,
            "DJANGO_SETTINGS_MODULE": "simsearch_project.settings",
            "DJANGO_DEBUG": "true",
            "SIMSEARCH_DATA_DIR": str(tmp_path),
            name: value,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and name in result.stderr, result.stderr[-500:]


def test_each_worker_loads_the_model_and_index_before_its_first_search(
    tmp_path: Path, django_user_model, product, scratch
) -> None:  # type: ignore[no-untyped-def]
    """The production config warms every worker up in the background (post_worker_init): the
    first searches after a restart do not each wait for the model, and nothing loads twice."""
    add_images(product, scratch, 6)
    assert build_now().status == "ready"
    staff = django_user_model.objects.create_user("lead", is_staff=True, is_superuser=True)
    token = Token.objects.create(user=staff).key
    log = tmp_path / "gunicorn.log"

    def count(pattern: str) -> int:
        return len(re.findall(pattern, log.read_text(errors="replace")))

    with running_gunicorn(log, workers=2, GUNICORN_CMD_ARGS="-c python:simsearch_project.gunicorn_conf") as base:
        wait_until(lambda: count(r"Serving process warmed up") == 2, timeout=90)
        assert count(r"indexing.embedder: Loaded ") == 2  # one model per worker, no search yet
        assert count(r"Serving v2 defect index from build") == 2
        for seed in range(6):  # whichever worker answers, it has loaded everything already
            assert search(base, token, image_bytes(seed=950 + seed, size=(80, 60)))
        assert count(r"indexing.embedder: Loaded ") == 2
