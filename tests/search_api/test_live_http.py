"""End to end over HTTP: gunicorn + a real qcluster, on the configured database and broker."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import requests
from django.contrib.auth.models import Permission
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone
from rest_framework.authtoken.models import Token

from catalog.models import DefectType, Image, Product
from indexing.models import IndexBuild
from tests.conftest import running_gunicorn, running_qcluster
from tests.helpers import image_bytes, png_header_bomb, wait_until
from tests.indexing.conftest import add_images, build_now

pytestmark = pytest.mark.django_db(transaction=True)


class Api:
    def __init__(self, base: str, token: str | None):
        self.base = base
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Token {token}"

    def post(self, path: str, **kwargs):  # type: ignore[no-untyped-def]
        return self.session.post(self.base + path, timeout=60, **kwargs)

    def get(self, path: str, **kwargs):  # type: ignore[no-untyped-def]
        return self.session.get(self.base + path, timeout=60, **kwargs)


@pytest.fixture
def tokens(django_user_model) -> dict[str, str]:  # type: ignore[no-untyped-def]
    staff = django_user_model.objects.create_user("lead", password="pw-lead-123", is_staff=True, is_superuser=True)
    line = django_user_model.objects.create_user("line-pc", password="pw-line-123")
    line.user_permissions.add(Permission.objects.get(codename="register_query_image"))
    return {"staff": Token.objects.create(user=staff).key, "line": Token.objects.create(user=line).key}


def upload(api: Api, data: bytes, **fields):  # type: ignore[no-untyped-def]
    return api.post("/api/images/", files={"file": ("part.jpg", data)}, data=fields)


def test_upload_rebuild_search_register_over_http(tmp_path, tokens):
    Product.objects.create(product_code="bracket-a", product_name="브래킷 A")
    DefectType.objects.create(defect_code="scratch", defect_name_ko="긁힘", defect_name_en="Scratch")
    DefectType.objects.create(defect_code="dent", defect_name_ko="찍힘", defect_name_en="Dent")
    with running_gunicorn(tmp_path / "gunicorn.log") as base, running_qcluster(tmp_path / "qcluster.log"):
        staff, line, anonymous = Api(base, tokens["staff"]), Api(base, tokens["line"]), Api(base, None)
        uploaded: dict[int, bytes] = {}
        for seed in range(12):
            data = image_bytes(seed=seed, size=(80, 60))
            defect = "scratch" if seed % 2 else "dent"
            response = upload(staff, data, image_type="defect", product_code="bracket-a", defect_code=defect)
            assert response.status_code == 201, response.text
            uploaded[response.json()["id"]] = data
        assert search_status(line, image=image_bytes()) == 503  # no index yet

        queued = staff.post("/api/index/rebuild/", data={"index_type": "defect"})
        assert queued.status_code == 202 and queued.json()["status"] == "queued" and queued.json()["task_id"]
        build_id = queued.json()["builds"][0]["id"]
        build = wait_until(
            lambda: (b := staff.get(f"/api/index/builds/{build_id}/").json())["status"] in ("ready", "failed") and b
        )
        assert build["status"] == "ready", build["error"]
        assert build["progress_done"] == build["progress_total"] == 12
        # Each gunicorn worker notices the new build at its next poll (SIMSEARCH_INDEX_POLL_SECONDS,
        # 0.5 s here); until then a worker that last looked before the build was ready has none.
        time.sleep(1.0)

        image_id, data = next(iter(uploaded.items()))
        found = wait_until(
            lambda: (
                (
                    r := line.post("/api/search/similarity", files={"image": ("q.jpg", data)}, data={"top_k": "3"})
                ).status_code
                == 200
                and r
            )
        )
        body = found.json()
        assert body["version"] == "v2" and body["index"]["build_id"] == build_id
        first = body["results"][0]
        assert first["image_id"] == image_id and first["similarity_score"] == pytest.approx(1.0, abs=1e-4)
        assert all(
            first[k] not in (None, "")
            for k in ("local_path", "storage_url", "product_code", "product_name", "defect_code", "defect_name")
        )
        assert "긁힘".encode() in found.content or "찍힘".encode() in found.content
        assert requests.get(first["storage_url"], timeout=10).content == data

        filtered = line.post(
            "/api/search/similarity/", json={"image_id": image_id, "top_k": 6, "defect_code": "scratch"}
        ).json()["results"]
        assert len(filtered) == 6 and {r["defect_code"] for r in filtered} == {"scratch"}
        text = line.post("/api/search/similarity/", json={"text": "a dent in a bracket", "top_k": 4})
        assert text.status_code == 200 and len(text.json()["results"]) == 4

        # A catalog image's link is refused (the query image's object is deleted when it expires);
        # the line's own upload of the photo is registered.
        fields = {"image_type": "query_temp", "product_code": "bracket-a", "defect_code": "scratch"}
        refused = line.post("/api/worker/image/register/", json={"storage_url": first["storage_url"], **fields})
        assert refused.status_code == 400 and "storage_url" in refused.json()["errors"], refused.text
        own_key = default_storage.save("line-uploads/cam1/query.jpg", ContentFile(data))
        registered = line.post("/api/worker/image/register/", json={"storage_url": own_key, **fields})
        assert registered.status_code == 201, registered.text
        Image.objects.filter(pk=registered.json()["image_id"]).update(expires_at=timezone.now() - timedelta(1))

        bad_inputs(base, staff, line, anonymous, uploaded_id=image_id)
        assert line.get("/readyz").json()["status"] == "ready"
    assert not Image.objects.filter(pk=registered.json()["image_id"], expires_at__gt=timezone.now()).exists()


def search_status(api: Api, **fields) -> int:  # type: ignore[no-untyped-def]
    if "image" in fields:
        return api.post(
            "/api/search/similarity/", files={"image": ("q.jpg", fields.pop("image"))}, data=fields
        ).status_code
    return api.post("/api/search/similarity/", json=fields).status_code


def bad_inputs(base: str, staff: Api, line: Api, anonymous: Api, uploaded_id: int) -> None:
    """A table of bad requests: each gets its 4xx with a JSON reason, and the server keeps answering."""
    ok = image_bytes(seed=999)
    big = image_bytes("PNG", size=(3000, 3000))
    cases = [
        ("no query", lambda: line.post("/api/search/similarity/", json={}), 400),
        ("two queries", lambda: line.post("/api/search/similarity/", json={"image_id": uploaded_id, "text": "x"}), 400),
        ("text file", lambda: line.post("/api/search/similarity/", files={"image": ("a.jpg", b"hello")}), 400),
        ("truncated", lambda: line.post("/api/search/similarity/", files={"image": ("a.jpg", ok[:300])}), 400),
        ("bomb", lambda: line.post("/api/search/similarity/", files={"image": ("a.png", png_header_bomb())}), 400),
        (
            "too large",
            lambda: line.post("/api/search/similarity/", files={"image": ("a.png", big + b"0" * 30_000_000)}),
            413,
        ),
        ("top_k 0", lambda: line.post("/api/search/similarity/", json={"image_id": uploaded_id, "top_k": 0}), 400),
        ("top_k 101", lambda: line.post("/api/search/similarity/", json={"image_id": uploaded_id, "top_k": 101}), 400),
        (
            "top_k text",
            lambda: line.post("/api/search/similarity/", json={"image_id": uploaded_id, "top_k": "many"}),
            400,
        ),
        (
            "image_type",
            lambda: line.post("/api/search/similarity/", json={"image_id": uploaded_id, "image_type": "query_temp"}),
            400,
        ),
        ("unknown id", lambda: line.post("/api/search/similarity/", json={"image_id": 987654}), 404),
        ("negative id", lambda: line.post("/api/search/similarity/", json={"image_id": -3}), 400),
        (
            "unknown product",
            lambda: line.post("/api/search/similarity/", json={"image_id": uploaded_id, "product_code": "nope"}),
            400,
        ),
        (
            "unknown defect",
            lambda: line.post("/api/search/similarity/", json={"image_id": uploaded_id, "defect_code": "nope"}),
            400,
        ),
        (
            "other host",
            lambda: line.post("/api/search/similarity/", json={"storage_url": "https://example.com/a.jpg"}),
            400,
        ),
        (
            "metadata ip",
            lambda: line.post(
                "/api/search/similarity/", json={"storage_url": "http://169.254.169.254/latest/meta-data/"}
            ),
            400,
        ),
        ("file url", lambda: line.post("/api/search/similarity/", json={"storage_url": "file:///etc/passwd"}), 400),
        ("dotdot", lambda: line.post("/api/search/similarity/", json={"storage_url": "images/../../etc/passwd"}), 400),
        (
            "dotdot media",
            lambda: line.post(
                "/api/search/similarity/", json={"storage_url": base + "/media/images/%2e%2e/%2e%2e/settings.py"}
            ),
            400,
        ),
        (
            "missing object",
            lambda: line.post("/api/search/similarity/", json={"storage_url": "images/nothing.jpg"}),
            404,
        ),
        (
            "not json",
            lambda: line.post("/api/search/similarity/", data="{oops", headers={"Content-Type": "application/json"}),
            400,
        ),
        ("anonymous", lambda: anonymous.post("/api/search/similarity/", json={"image_id": uploaded_id}), 401),
        ("bad token", lambda: Api(base, "0" * 40).post("/api/search/similarity/", json={"image_id": uploaded_id}), 401),
        ("rebuild as line", lambda: line.post("/api/index/rebuild/", json={"index_type": "all"}), 403),
        ("rebuild type", lambda: staff.post("/api/index/rebuild/", json={"index_type": "everything"}), 400),
        ("activate unknown", lambda: staff.post("/api/index/builds/424242/activate/"), 404),
        (
            "upload as line",
            lambda: upload(line, ok, image_type="defect", product_code="bracket-a", defect_code="scratch"),
            403,
        ),
        ("upload bomb", lambda: upload(staff, png_header_bomb(), image_type="normal", product_code="bracket-a"), 400),
        (
            "register outside",
            lambda: line.post(
                "/api/worker/image/register/",
                json={"storage_url": "http://10.0.0.5/x.jpg", "image_type": "query_temp", "product_code": "bracket-a"},
            ),
            400,
        ),
        ("unknown path", lambda: line.get("/api/nothing/"), 404),
        ("wrong method", lambda: line.get("/api/search/similarity/"), 405),
    ]
    assert len(cases) >= 20
    images_before = Image.objects.count()
    for name, call, expected in cases:
        response = call()
        assert response.status_code == expected, (name, response.status_code, response.text[:300])
        assert response.headers["Content-Type"].startswith("application/json"), name
        assert response.json().get("detail"), name
        assert requests.get(base + "/healthz", timeout=10).status_code == 200, name
    assert Image.objects.count() == images_before
    assert line.post("/api/search/similarity/", json={"image_id": uploaded_id}).status_code == 200


def test_v1_mode_over_http(tmp_path, tokens, settings):
    folder = tmp_path / "legacy"
    folder.mkdir()
    blobs = {
        f"prod{p}_{d}_{i}.png": image_bytes("PNG", seed=p * 10 + i + (5 if d == "dent" else 0))
        for p in (1, 2)
        for d in ("scratch", "dent")
        for i in range(3)
    }
    for name, data in blobs.items():
        (folder / name).write_bytes(data)
    settings.INDEX_DIR_V1 = str(folder)
    assert build_now(engine="v1").status == "ready"
    env = {"USE_INDEX_V2": "false", "INDEX_DIR_V1": str(folder)}
    with running_gunicorn(tmp_path / "gunicorn.log", workers=1, **env) as base:
        response = Api(base, tokens["line"]).post(
            "/api/search/similarity", files={"image": ("q.png", blobs["prod1_dent_2.png"])}, data={"top_k": "2"}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["version"] == "v1" and body["results"][0]["image_path"].endswith("prod1_dent_2.png")
        assert body["results"][0]["product"] == "prod1" and body["results"][0]["defect"] == "dent"


def test_hot_swap_under_concurrent_searches_fails_no_request(tmp_path, tokens, product, scratch):
    add_images(product, scratch, 10)
    first = build_now()
    add_images(product, scratch, 5, start=10)
    second = build_now()
    with running_gunicorn(tmp_path / "gunicorn.log", workers=2) as base:
        staff = Api(base, tokens["staff"])
        query = image_bytes(seed=3)
        seen: list[tuple[float, int]] = []
        failures: list[str] = []
        stop = threading.Event()

        def client() -> None:
            api = Api(base, tokens["line"])
            while not stop.is_set():
                response = api.post("/api/search/similarity/", files={"image": ("q.jpg", query)}, data={"top_k": "3"})
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")
                else:
                    seen.append((time.monotonic(), response.json()["index"]["build_id"]))

        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: any(b == second.pk for _, b in seen), timeout=60)
            for target in (first, second, first):
                switched_at = time.monotonic()
                assert staff.post(f"/api/index/builds/{target.pk}/activate/").status_code == 200
                wait_until(
                    lambda target=target, since=switched_at: (
                        sum(1 for t, b in seen if t > since + 2.5 and b == target.pk) >= 4
                    ),
                    timeout=30,
                )
                late = [b for t, b in seen if t > switched_at + 2.5]
                assert set(late) == {target.pk}, "a process kept answering from the old build"
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
    assert failures == [] and len(seen) > 20
    assert IndexBuild.objects.get(is_active=True).pk == first.pk
