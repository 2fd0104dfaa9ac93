"""`make demo`'s steps, as the Makefile runs them (SQLite, local files, development settings,
offline), with a small catalog: migrate, demo admin, demo catalog, weights fallback, rebuild,
then serve_demo answers searches and Ctrl-C stops the web server and the task queue."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.conftest import ROOT, free_ports
from tests.helpers import wait_until


def demo_env(data_dir: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SIMSEARCH_", "AWS_"))}
    keep.pop("DATABASE_URL", None)
    keep.pop("REDIS_URL", None)
    # The Makefile's DEMO_ENV, with empty model caches: like a fresh machine without network.
    return keep | {
        "HF_HOME": str(data_dir / "hf"),
        "XDG_CACHE_HOME": str(data_dir / "cache"),
        "DJANGO_SETTINGS_MODULE": "simsearch_project.settings",
        "DJANGO_DEBUG": "true",
        "SIMSEARCH_DATA_DIR": str(data_dir),
        "SIMSEARCH_STORAGE": "local",
        "HF_HUB_OFFLINE": "1",
    }


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    return found


def group_members(pgid: int) -> list[str]:
    """Live processes of a process group ("pid state command"); zombies are already dead."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        state, process_group = fields[0], int(fields[2])
        if process_group == pgid and state not in ("Z", "X"):
            members.append(f"{stat.parent.name} {state} {command.strip()}")
    return members


def test_demo_steps_then_ctrl_c_stops_everything(tmp_path: Path) -> None:
    env = demo_env(tmp_path / "demo")
    manage(env, "migrate", "--noinput")
    admin = manage(env, "create_demo_admin").stdout
    token = re.search(r"Authorization: Token (\w+)", admin).group(1)
    assert "user 'admin', password 'admin'" in admin
    loaded = manage(env, "load_demo_catalog", "--normal-per-product", "2", "--defects-per-kind", "1").stdout
    assert "Loaded 18 demo images for 3 products" in loaded
    assert "already loaded" in manage(env, "load_demo_catalog").stdout  # running make demo twice is fine

    weights = manage(env, "demo_weights")
    pretrained = weights.stdout.strip()
    # No network and no cached CLIP weights: the demo falls back and says so loudly.
    assert pretrained == "untrained" and "NOT meaningful" in weights.stderr
    env["SIMSEARCH_PRETRAINED"] = pretrained
    manage(env, "rebuild_index", "--type", "all", "--sync")

    port = free_ports(1)[0]
    log_path = tmp_path / "serve_demo.log"
    qcluster = 0
    with open(log_path, "wb") as log:
        demo = subprocess.Popen(
            [sys.executable, "manage.py", "serve_demo", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal gives it
        )
    try:
        base = f"http://127.0.0.1:{port}"

        def ready() -> dict | None:
            try:
                response = requests.get(f"{base}/readyz", timeout=5)
            except requests.RequestException:
                return None
            return response.json() if response.status_code == 200 else None

        assert demo.poll() is None
        wait_until(ready, timeout=120)
        wait_until(lambda: "Q Cluster" in log_path.read_text() and " running." in log_path.read_text(), timeout=60)
        found = requests.post(
            f"{base}/api/search/similarity/",
            headers={"Authorization": f"Token {token}"},
            data={"image_id": 1, "image_type": "normal", "top_k": 3},
            timeout=60,
        )
        assert found.status_code == 200, found.text
        body = found.json()
        assert body["results"][0]["image_id"] == 1 and body["index"]["is_untrained"] is True
        assert requests.get(f"{base}/admin/login/", timeout=10).status_code == 200

        (qcluster,) = children(demo.pid)  # leads its own process group: the sentinel and workers
        assert len(group_members(qcluster)) >= 4

        os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
        assert demo.wait(timeout=60) == 0
        assert group_members(demo.pid) == []
        # The qcluster and all its processes are gone too (allowing a moment for the last exits).
        deadline = time.monotonic() + 15
        while group_members(qcluster) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert group_members(qcluster) == []
        assert "Stopped the web server and the task queue." in log_path.read_text()
    finally:
        for group in (demo.pid, qcluster):
            if group and group_members(group):
                os.killpg(group, signal.SIGKILL)


def test_serve_demo_on_a_taken_port_says_so_and_starts_nothing(tmp_path: Path) -> None:
    env = demo_env(tmp_path / "demo")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        demo = subprocess.Popen(
            [sys.executable, "manage.py", "serve_demo", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        output, _ = demo.communicate(timeout=120)
    assert demo.returncode != 0
    assert f"Cannot serve on 127.0.0.1:{port}" in output and "PORT=" in output
    assert "Q Cluster" not in output and group_members(demo.pid) == []  # no task queue left behind
