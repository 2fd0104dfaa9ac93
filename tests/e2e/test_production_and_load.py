"""Production-like settings end to end, and zero failed requests under load (idle and while a
rebuild runs and its build is activated)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from rest_framework.authtoken.models import Token

from benchmarks.http_load import run_load
from indexing.models import CachedEmbedding, IndexBuild
from tests.conftest import ROOT, running_gunicorn, running_qcluster, test_database_url
from tests.helpers import image_bytes
from tests.indexing.conftest import add_images, build_now

pytestmark = pytest.mark.django_db(transaction=True)


def test_production_settings_end_to_end(tmp_path: Path, s3_storage, django_user_model, product, scratch):
    """DEBUG off, a real secret, HTTPS behind a proxy, the configured database (PostgreSQL in CI),
    S3 (SeaweedFS) and the broker (Redis in CI): collectstatic, check --deploy, gunicorn +
    qcluster, upload, rebuild and search over HTTP."""
    production = {
        "DJANGO_SETTINGS_MODULE": "simsearch_project.settings",
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "production-like-secret-" + "x7Qp" * 12,
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        "DJANGO_SECURE_SSL_REDIRECT": "true",
        "DJANGO_SECURE_COOKIES": "true",
        "DATABASE_URL": test_database_url(),
        "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
        **s3_storage.env(),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")} | production
    for command in (["collectstatic", "--noinput", "-v0"], ["check", "--deploy", "--fail-level", "WARNING"]):
        result = subprocess.run(
            [sys.executable, "manage.py", *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stdout + result.stderr
    staff = django_user_model.objects.create_user("lead", password="pw-lead-123", is_staff=True, is_superuser=True)
    token = Token.objects.create(user=staff).key
    https = {"X-Forwarded-Proto": "https", "Authorization": f"Token {token}"}
    with (
        running_gunicorn(tmp_path / "gunicorn.log", workers=2, **production) as base,
        running_qcluster(tmp_path / "qcluster.log", **production),
    ):
        assert requests.get(f"{base}/healthz", allow_redirects=False, timeout=10).status_code == 301  # plain HTTP
        css = requests.get(f"{base}/static/admin/css/base.css", headers=https, timeout=10)
        assert css.status_code == 200 and "text/css" in css.headers["Content-Type"]  # WhiteNoise
        uploaded = {}
        for seed in range(6):
            data = image_bytes(seed=seed)
            response = requests.post(
                f"{base}/api/images/",
                headers=https,
                timeout=30,
                files={"file": ("p.jpg", data)},
                data={"image_type": "defect", "product_code": "bracket-a", "defect_code": "scratch"},
            )
            assert response.status_code == 201, response.text
            uploaded[response.json()["id"]] = data
            assert "X-Amz-Signature" in response.json()["storage_url"]
        rebuild = requests.post(f"{base}/api/index/rebuild/", headers=https, data={"index_type": "defect"}, timeout=30)
        assert rebuild.status_code == 202, rebuild.text
        build_id = rebuild.json()["builds"][0]["id"]
        deadline = time.monotonic() + 120
        while IndexBuild.objects.get(pk=build_id).status in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.3)
        assert IndexBuild.objects.get(pk=build_id).status == "ready", IndexBuild.objects.get(pk=build_id).error
        image_id, data = next(iter(uploaded.items()))
        deadline = time.monotonic() + 30
        while True:
            found = requests.post(
                f"{base}/api/search/similarity/", headers=https, files={"image": ("q.jpg", data)}, timeout=60
            )
            if found.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert found.status_code == 200, found.text
        first = found.json()["results"][0]
        assert first["image_id"] == image_id and first["similarity_score"] == pytest.approx(1.0, abs=1e-4)
        assert requests.get(first["storage_url"], timeout=10).content == data
        ready = requests.get(f"{base}/readyz", headers={"X-Forwarded-Proto": "https"}, timeout=10).json()
        assert ready["status"] == "ready" and ready["database"] == "ok"


def test_zero_failed_requests_under_load_idle_and_during_rebuild(tmp_path: Path, django_user_model, product, scratch):
    add_images(product, scratch, 40)
    first = build_now()
    staff = django_user_model.objects.create_user("lead", password="pw-lead-123", is_staff=True, is_superuser=True)
    token = Token.objects.create(user=staff).key
    queries = [image_bytes(seed=1000 + i) for i in range(8)]
    with running_gunicorn(tmp_path / "gunicorn.log", workers=2) as base, running_qcluster(tmp_path / "qcluster.log"):
        idle = run_load(base, token, clients=3, seconds=4, queries=queries)
        assert idle.errors == [] and len(idle.latencies) > 5, idle.errors[:3]

        CachedEmbedding.objects.all().delete()  # the rebuild must embed everything again
        add_images(product, scratch, 40, start=40)
        response = requests.post(
            f"{base}/api/index/rebuild/",
            data={"index_type": "defect"},
            headers={"Authorization": f"Token {token}"},
            timeout=30,
        )
        assert response.status_code == 202
        new_id = response.json()["builds"][0]["id"]
        finished = threading.Event()

        def watch() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if IndexBuild.objects.filter(pk=new_id, status__in=["ready", "failed"]).exists():
                    time.sleep(2)  # keep the load on across the swap
                    break
                time.sleep(0.3)
            finished.set()

        watcher = threading.Thread(target=watch)
        watcher.start()
        busy = run_load(base, token, clients=3, seconds=12, queries=queries, during=finished)
        watcher.join()
    assert IndexBuild.objects.get(pk=new_id).status == "ready"
    assert busy.errors == [], busy.errors[:3]
    assert {first.pk, new_id} <= busy.build_ids  # answered by the old build, then by the new one
