"""Faults a plant will see, each with real components: storage stops mid-build, the database is
unreachable at start-up or drops during searches, two rebuild clicks at once. (A qcluster
worker killed mid-build: tests/indexing/test_queue_builds.py.)"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection
from rest_framework.authtoken.models import Token

from indexing.models import BuildStatus, IndexBuild
from indexing.services import index_build_request
from search_api.index_cache import index_cache
from tests.conftest import S3Server, running_gunicorn, running_qcluster, start_seaweedfs, stop_process
from tests.faults.tcp_proxy import TcpProxy
from tests.helpers import build_folders, image_bytes, wait_until
from tests.indexing.conftest import add_images, build_now

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def token(django_user_model) -> str:  # type: ignore[no-untyped-def]
    user = django_user_model.objects.create_user("lead", password="pw-lead-123", is_staff=True, is_superuser=True)
    return Token.objects.create(user=user).key


def search(base: str, token: str, data: bytes, **fields: str) -> requests.Response:
    return requests.post(
        f"{base}/api/search/similarity/",
        files={"image": ("q.jpg", data)},
        data=fields,
        headers={"Authorization": f"Token {token}"},
        timeout=60,
    )


def test_storage_stops_mid_build(settings, tmp_path: Path, token, product, scratch):
    weed = start_seaweedfs(tmp_path / "weed", bucket="fault-bucket")
    storage = weed.storage_settings()
    settings.STORAGES = {**settings.STORAGES, "default": storage}
    settings.SIMSEARCH_STORAGE = "s3"
    # A real-size model everywhere (this process, the web server, the worker), with one image
    # per batch on one thread, so the build is slow enough to pull the plug on it part-way.
    slow_env = {
        "SIMSEARCH_MODEL": "ViT-B-32",
        "SIMSEARCH_EMBED_BATCH_SIZE": "1",
        "SIMSEARCH_TORCH_THREADS": "1",
        "SIMSEARCH_DEVICE": "cpu",
    }
    settings.SIMSEARCH_MODEL = "ViT-B-32"
    try:
        images = add_images(product, scratch, 30)
        good = build_now()
        assert good.is_active, good.error
        add_images(product, scratch, 30, start=30)
        (slow,) = index_build_request(index_type="defect")
        with (
            running_gunicorn(tmp_path / "gunicorn.log", workers=1, **weed.env(), **slow_env) as base,
            running_qcluster(tmp_path / "qcluster.log", **weed.env(), **slow_env),
        ):
            query = image_bytes(seed=3)
            assert search(base, token, query).json()["index"]["build_id"] == good.pk
            wait_until(
                lambda: (
                    IndexBuild.objects.filter(pk=slow.pk, status="running", progress_done__gt=0).exists()
                    or IndexBuild.objects.get(pk=slow.pk).status in ("ready", "failed")
                )
            )
            stop_process(weed.process)  # object storage goes away in the middle of the build
            failed = wait_until(lambda: (b := IndexBuild.objects.get(pk=slow.pk)).status != "running" and b)
            assert failed.status == BuildStatus.FAILED, "the build should fail while storage is down"
            assert "endpoint" in failed.error.lower() or "connect" in failed.error.lower(), failed.error
            good.refresh_from_db()
            assert good.is_active
            answered = search(base, token, query)
            assert answered.status_code == 200 and answered.json()["index"]["build_id"] == good.pk

            weed = start_seaweedfs(tmp_path / "weed", bucket="fault-bucket", ports=list(weed.ports))
            # The bucket answers before the volume server does: wait until objects read again.
            wait_until(lambda: all(readable(weed, image.file.name) for image in (images[0], images[-1])), timeout=60)
            (retry,) = index_build_request(index_type="defect")
            done = wait_until(
                lambda: (b := IndexBuild.objects.get(pk=retry.pk)).status in ("ready", "failed") and b, timeout=300
            )
            assert done.status == BuildStatus.READY and done.vector_count == 60, done.error
            wait_until(lambda: search(base, token, query).json()["index"]["build_id"] == retry.pk, timeout=30)
        # The build that lost its storage left no files behind; the retry's and the first one's stay.
        assert build_folders() == {b.artifact_prefix.rsplit("/", 1)[1] for b in (good, done)}
    finally:
        stop_process(weed.process)


def readable(server: S3Server, key: str) -> bool:
    try:
        server.client().get_object(Bucket=server.bucket, Key=key)["Body"].read()
    except Exception:
        return False
    return True


class DatabaseSwitch:
    """A DATABASE_URL for server processes that the test can make unreachable and bring back:
    a cuttable TCP proxy in front of PostgreSQL, or for SQLite a path that appears and vanishes."""

    def __init__(self, tmp_path: Path):
        db = connection.settings_dict
        self.postgres = connection.vendor == "postgresql"
        if self.postgres:
            self.proxy = TcpProxy(int(db["PORT"] or 5432), db["HOST"] or "127.0.0.1")
            self.proxy.up()
            self.proxy.down()
            auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
            self.url = f"postgres://{auth}@127.0.0.1:{self.proxy.port}/{db['NAME']}"
        else:
            self.real = Path(db["NAME"])
            self.folder = tmp_path / "db-mount"
            self.url = f"sqlite:///{self.folder / self.real.name}"

    def up(self) -> None:
        if self.postgres:
            self.proxy.up()
        else:
            self.folder.mkdir(exist_ok=True)
            (self.folder / self.real.name).symlink_to(self.real)

    def down(self) -> None:
        if self.postgres:
            self.proxy.down()
        else:
            (self.folder / self.real.name).unlink()
            self.folder.rmdir()


def test_database_unreachable_at_start_serves_the_cached_index(tmp_path: Path, token, product, scratch):
    add_images(product, scratch, 8)
    build = build_now()
    assert index_cache.get(engine="v2", image_type="defect").build_id == build.pk  # cached locally
    switch = DatabaseSwitch(tmp_path)  # starts down
    with running_gunicorn(tmp_path / "gunicorn.log", workers=1, DATABASE_URL=switch.url) as base:
        ready = requests.get(f"{base}/readyz", timeout=30)
        body = ready.json()
        assert ready.status_code == 200 and body["status"] == "degraded", body
        assert body["loaded"] == {"v2/defect": build.pk} and "unreachable" in body["database"]
        refused = search(base, token, image_bytes(seed=1))  # the token cannot be checked yet
        assert refused.status_code == 503 and "database" in refused.json()["detail"].lower()
        switch.up()
        wait_until(lambda: requests.get(f"{base}/readyz", timeout=30).json()["status"] == "ready", timeout=30)
        answered = search(base, token, image_bytes(seed=1))
        assert answered.status_code == 200 and answered.json()["index"]["build_id"] == build.pk


def test_postgres_connection_drop_during_searches(tmp_path: Path, token, product, scratch):
    if connection.vendor != "postgresql":
        pytest.skip("a PostgreSQL connection drop needs PostgreSQL (.ci/run runs this on it)")
    images = add_images(product, scratch, 8)
    build_now()
    switch = DatabaseSwitch(tmp_path)
    switch.up()
    with running_gunicorn(tmp_path / "gunicorn.log", workers=1, DATABASE_URL=switch.url) as base:
        query = image_bytes(seed=2)
        assert search(base, token, query).status_code == 200
        by_id = {"image_id": images[0].pk}
        assert search_json(base, token, by_id).status_code == 200
        switch.down()  # every open connection is cut, new ones are refused
        outage = search_json(base, token, by_id)
        assert outage.status_code == 503 and "database" in outage.json()["detail"].lower()
        # Upload searches need no database: the token is remembered, the index is in memory.
        assert search(base, token, query).status_code == 200
        switch.up()
        wait_until(lambda: search_json(base, token, by_id).status_code == 200, timeout=30)
        assert search(base, token, query).status_code == 200


def search_json(base: str, token: str, body: dict) -> requests.Response:
    return requests.post(
        f"{base}/api/search/similarity/", json=body, headers={"Authorization": f"Token {token}"}, timeout=60
    )


def test_two_rebuild_clicks_at_once_start_one_build(tmp_path: Path, token, product, scratch):
    add_images(product, scratch, 4)
    with running_gunicorn(tmp_path / "gunicorn.log", workers=2) as base:
        barrier = threading.Barrier(4)
        responses: list[requests.Response] = []

        def click() -> None:
            barrier.wait()
            responses.append(
                requests.post(
                    f"{base}/api/index/rebuild/",
                    data={"index_type": "defect"},
                    headers={"Authorization": f"Token {token}"},
                    timeout=60,
                )
            )

        threads = [threading.Thread(target=click) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(r.status_code for r in responses) == [200, 200, 200, 202], [r.text for r in responses]
    assert {r.json()["builds"][0]["id"] for r in responses} == {IndexBuild.objects.get().pk}
    assert settings.Q_CLUSTER["max_attempts"] == 1


def test_revoked_credentials_stay_refused_during_a_database_outage(settings, tmp_path: Path, product, scratch):
    """A token deleted, a user deactivated or a user taken out of a group while the database is up
    is refused when it goes down, though each was remembered for the outage; untouched tokens keep
    working from that memory, unless SIMSEARCH_AUTH_OUTAGE_CACHE_SECONDS=0 turns it off."""
    credentials = settings.CACHES["credentials"]
    if credentials["BACKEND"].endswith("FileBasedCache"):
        # Revocations here must reach the servers' cache: the one every process in their data dir shares.
        shared = {**credentials, "LOCATION": str(tmp_path / "credential_cache")}
        settings.CACHES = {**settings.CACHES, "credentials": shared}
    add_images(product, scratch, 4)
    build_now()
    group = Group.objects.create(name="Line PC (outage test)")
    users, tokens = {}, {}
    for name in ("untouched", "token deleted", "deactivated", "left group"):
        users[name] = get_user_model().objects.create_user(name.replace(" ", "-"), password="pw-line-123")
        users[name].groups.add(group)
        tokens[name] = Token.objects.create(user=users[name]).key
    query = image_bytes(seed=4)
    switch = DatabaseSwitch(tmp_path)
    switch.up()
    with running_gunicorn(tmp_path / "up.log", workers=1, DATABASE_URL=switch.url) as base:
        checked = {name: search(base, key, query).status_code for name, key in tokens.items()}
        assert checked == dict.fromkeys(tokens, 200)  # each token confirmed by the database, and remembered

    Token.objects.filter(key=tokens["token deleted"]).delete()
    users["deactivated"].is_active = False
    users["deactivated"].save()
    group.user_set.remove(users["left group"])
    switch.down()
    with running_gunicorn(tmp_path / "down.log", workers=1, DATABASE_URL=switch.url) as base:
        assert requests.get(f"{base}/readyz", timeout=30).json()["status"] == "degraded"
        answers = {name: search(base, key, query) for name, key in tokens.items()}
        assert answers["untouched"].status_code == 200, answers["untouched"].text
        for name in ("token deleted", "deactivated", "left group"):
            assert answers[name].status_code == 503, (name, answers[name].text)
            assert "database" in answers[name].json()["detail"].lower()
    with running_gunicorn(
        tmp_path / "off.log", workers=1, DATABASE_URL=switch.url, SIMSEARCH_AUTH_OUTAGE_CACHE_SECONDS="0"
    ) as base:
        assert search(base, tokens["untouched"], query).status_code == 503
