"""`manage.py fetch_weights` against a stand-in of the Hugging Face hub on 127.0.0.1, and the
SIMSEARCH_PRETRAINED_SHA256 check on the server side.

The stand-in answers what huggingface_hub's downloads ask for: HEAD and GET on
`/{repo_id}/resolve/{revision}/{filename}` with the hub's X-Repo-Commit and ETag (an LFS file's
sha256) headers, 404 + `X-Error-Code: EntryNotFound` for a file the repository lacks, 401 +
`RepoNotFound` for an unknown repository."""

from __future__ import annotations

import hashlib
import io
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import open_clip
import pytest
import torch
import torchvision
from django.core.management import CommandError, call_command
from huggingface_hub import constants as hf_constants
from open_clip.pretrained import _pcfg
from safetensors.torch import save as safetensors_bytes

from indexing.embedder import WeightsUnavailable
from indexing.runtime import current_embedder, current_patch_extractor
from indexing.weights import ANOMALY_HUB_REPOS, HubFile, clip_hub_file

ROOT = Path(__file__).resolve().parents[2]
TINY = "simsearch-tiny"
TINY_TAG = "stand_in"
TINY_REPO = "simsearch-test/tiny-clip"
RESNET_REPO = "timm/resnet18.tv_in1k"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


# --- the stand-in hub ---------------------------------------------------------------------------


@dataclass
class StandInHub:
    url: str
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    repos: set[str] = field(default_factory=set)
    wrong_etag: set[tuple[str, str]] = field(default_factory=set)
    requests: list[tuple[str, str]] = field(default_factory=list)

    def serve(self, repo_id: str, filename: str | None = None, content: bytes = b"") -> None:
        self.repos.add(repo_id)
        if filename is not None:
            self.files[(repo_id, filename)] = content


class _HubHandler(BaseHTTPRequestHandler):
    server: _HubServer

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def _answer(self, *, with_body: bool) -> None:
        hub = self.server.hub
        hub.requests.append((self.command, self.path))
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", urlsplit(self.path).path)
        repo_id, filename = (match.group(1), unquote(match.group(3))) if match else ("", "")
        if repo_id not in hub.repos:
            self._status(401, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
            return
        content = hub.files.get((repo_id, filename))
        if content is None:
            self._status(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
            return
        etag = hashlib.sha256(content).hexdigest()
        if (repo_id, filename) in hub.wrong_etag:
            etag = "f" * 64
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(content)))
        self.send_header("ETag", f'"{etag}"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.end_headers()
        if with_body:
            self.wfile.write(content)

    def _status(self, code: int, headers: dict[str, str]) -> None:
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # keep the test output clean
        pass


class _HubServer(ThreadingHTTPServer):
    daemon_threads = True
    hub: StandInHub


def _point_huggingface_hub_at(monkeypatch: pytest.MonkeyPatch, endpoint: str, home: Path) -> None:
    """HF_ENDPOINT as the command's process would have it; huggingface_hub read its environment
    into constants when this test process imported it, so those follow too."""
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(home / "hub"))


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[StandInHub]:
    server = _HubServer(("127.0.0.1", 0), _HubHandler)
    server.hub = StandInHub(url=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _point_huggingface_hub_at(monkeypatch, server.hub.url, tmp_path / "hf-home")
    # The tiny architecture gets a pretrained tag that open_clip resolves to the stand-in's repository
    # (open_clip has no public way to add one), so the command runs its real resolution path.
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, TINY, {TINY_TAG: _pcfg(hf_hub=f"{TINY_REPO}/")})
    try:
        yield server.hub
    finally:
        server.shutdown()
        server.server_close()


# --- checkpoints the stand-in serves ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    """Weights unlike the untrained ones (another seed), so loading them is visible."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        model = open_clip.create_model(TINY)
    return model.state_dict()


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(tiny_state, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def resnet_state() -> dict[str, torch.Tensor]:
    """A torchvision resnet18 state_dict (random weights) as timm publishes tv_in1k: no BatchNorm
    batch counters."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4321)
        network = torchvision.models.resnet18(weights=None)
    return {name: tensor for name, tensor in network.state_dict().items() if not name.endswith("num_batches_tracked")}


def settings_printed(output: str) -> dict[str, str]:
    return dict(re.findall(r"^(SIMSEARCH_[A-Z0-9_]+)=(\S+)$", output, flags=re.MULTILINE))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the command ----------------------------------------------------------------------------------


def test_fetch_writes_both_checkpoints_and_the_settings_that_load_them(
    hub: StandInHub, tiny_checkpoint: bytes, tiny_state, resnet_state, tmp_path: Path, settings
) -> None:
    hub.serve(TINY_REPO, "open_clip_pytorch_model.bin", tiny_checkpoint)  # no safetensors twin
    hub.serve(RESNET_REPO, "model.safetensors", safetensors_bytes(resnet_state))
    out = tmp_path / "weights"
    stdout = io.StringIO()
    call_command("fetch_weights", "--model", TINY, "--pretrained", TINY_TAG, "--out", str(out), stdout=stdout)

    clip_file = out / f"open_clip_{TINY}_{TINY_TAG}.bin"
    resnet_file = out / "resnet18-imagenet.pth"
    assert clip_file.read_bytes() == tiny_checkpoint
    assert sorted(path.name for path in out.iterdir()) == sorted(
        [clip_file.name, resnet_file.name, "SHA256SUMS", "simsearch-weights.env"]
    )  # no scratch files left behind
    printed = settings_printed(stdout.getvalue())
    assert printed == {
        "SIMSEARCH_MODEL": TINY,
        "SIMSEARCH_PRETRAINED": str(clip_file),
        "SIMSEARCH_PRETRAINED_SHA256": sha256_of(clip_file),
        "SIMSEARCH_ANOMALY_BACKBONE": "resnet18",
        "SIMSEARCH_ANOMALY_WEIGHTS": str(resnet_file),
        "SIMSEARCH_ANOMALY_WEIGHTS_SHA256": sha256_of(resnet_file),
    }
    assert settings_printed((out / "simsearch-weights.env").read_text()) == printed
    assert (out / "SHA256SUMS").read_text() == (
        f"{sha256_of(clip_file)}  {clip_file.name}\n{sha256_of(resnet_file)}  {resnet_file.name}\n"
    )
    # open_clip's order: the safetensors twin first, then the .bin the tag names.
    heads = [path for method, path in hub.requests if method == "HEAD" and TINY_REPO in path]
    assert heads[:2] == [
        f"/{TINY_REPO}/resolve/main/open_clip_model.safetensors",
        f"/{TINY_REPO}/resolve/main/open_clip_pytorch_model.bin",
    ]

    # The printed settings, applied on "the server", load exactly these weights.
    for name, value in printed.items():
        setattr(settings, name, value)
    embedder = current_embedder()
    assert not embedder.is_untrained
    assert embedder.fingerprint_source["weights"] == f"file:sha256={sha256_of(clip_file)}"
    assert torch.equal(embedder.model.state_dict()["visual.conv1.weight"], tiny_state["visual.conv1.weight"])
    extractor = current_patch_extractor()
    assert not extractor.is_untrained
    assert extractor.fingerprint_source["weights"] == f"file:sha256={sha256_of(resnet_file)}"
    saved = torch.load(resnet_file, weights_only=True)
    assert torch.equal(saved["layer3.0.conv1.weight"], resnet_state["layer3.0.conv1.weight"])


def test_server_dir_names_where_the_files_will_be_and_none_skips_the_resnet(
    hub: StandInHub, tiny_checkpoint: bytes, tmp_path: Path
) -> None:
    hub.serve(TINY_REPO, "open_clip_pytorch_model.bin", tiny_checkpoint)
    out = tmp_path / "weights"
    stdout = io.StringIO()
    call_command(
        "fetch_weights",
        *("--model", TINY, "--pretrained", TINY_TAG, "--anomaly-backbone", "none"),
        *("--out", str(out), "--server-dir", "/opt/models"),
        stdout=stdout,
    )
    printed = settings_printed(stdout.getvalue())
    assert printed["SIMSEARCH_PRETRAINED"] == f"/opt/models/open_clip_{TINY}_{TINY_TAG}.bin"
    assert not any(name.startswith("SIMSEARCH_ANOMALY") for name in printed)
    assert not any(RESNET_REPO in path for _, path in hub.requests)
    with pytest.raises(CommandError, match="--server-dir must be an absolute path"):
        call_command("fetch_weights", "--model", TINY, "--pretrained", TINY_TAG, "--out", str(out), "--server-dir", "m")


def test_unknown_model_tag_or_backbone_are_refused_before_any_download(hub: StandInHub, tmp_path: Path) -> None:
    out = tmp_path / "weights"
    with pytest.raises(CommandError, match=r"--model 'ViT-B-99' is not an open_clip architecture.*ViT-B-32"):
        call_command("fetch_weights", "--model", "ViT-B-99", "--out", str(out))
    with pytest.raises(CommandError, match=r"--pretrained 'laion9b' is not an open_clip tag for ViT-B-32") as caught:
        call_command("fetch_weights", "--model", "ViT-B-32", "--pretrained", "laion9b", "--out", str(out))
    assert "laion2b_s34b_b79k" in str(caught.value) and "openai" in str(caught.value)  # the valid tags
    with pytest.raises(CommandError, match=r"--anomaly-backbone 'vgg16' is not supported.*resnet18"):
        call_command("fetch_weights", "--anomaly-backbone", "vgg16", "--out", str(out))
    assert hub.requests == [] and not out.exists()


def test_an_unreachable_hub_is_a_command_error(hub: StandInHub, monkeypatch, tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    _point_huggingface_hub_at(monkeypatch, closed, tmp_path / "hf-home")
    out = tmp_path / "weights"
    with pytest.raises(CommandError, match=f"Could not reach the model hub at {closed}"):
        call_command("fetch_weights", "--model", TINY, "--pretrained", TINY_TAG, "--out", str(out))
    assert list(out.iterdir()) == []


def test_a_file_missing_on_the_hub_is_a_command_error(hub: StandInHub, tmp_path: Path) -> None:
    hub.serve(TINY_REPO)  # the repository exists, its checkpoint does not
    out = tmp_path / "weights"
    with pytest.raises(
        CommandError,
        match=f"has none of open_clip_model.safetensors, open_clip_pytorch_model.bin in {TINY_REPO} \\(HTTP 404\\)",
    ):
        call_command("fetch_weights", "--model", TINY, "--pretrained", TINY_TAG, "--out", str(out))
    assert list(out.iterdir()) == []
    hub.repos.clear()  # and no repository at all
    with pytest.raises(CommandError, match=f"has no public repository {TINY_REPO}"):
        call_command("fetch_weights", "--model", TINY, "--pretrained", TINY_TAG, "--out", str(out))


def test_a_download_that_does_not_match_the_hubs_sha256_is_refused(
    hub: StandInHub, tiny_checkpoint: bytes, tmp_path: Path
) -> None:
    hub.serve(TINY_REPO, "open_clip_pytorch_model.bin", tiny_checkpoint)
    hub.wrong_etag.add((TINY_REPO, "open_clip_pytorch_model.bin"))
    out = tmp_path / "weights"
    with pytest.raises(CommandError, match=f"is corrupt: its sha256 is {hashlib.sha256(tiny_checkpoint).hexdigest()}"):
        call_command("fetch_weights", "--model", TINY, "--pretrained", TINY_TAG, "--out", str(out))
    assert list(out.iterdir()) == []


def test_an_unwritable_out_dir_is_a_command_error(hub: StandInHub, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    with pytest.raises(CommandError, match=f"Cannot write to {blocker / 'weights'}"):
        call_command("fetch_weights", "--model", TINY, "--pretrained", TINY_TAG, "--out", str(blocker / "weights"))
    assert hub.requests == []


def test_vit_b_32_laion2b_is_fetched_from_its_hub_file_and_checked_against_the_architecture(
    hub: StandInHub, tiny_state, tmp_path: Path
) -> None:
    """In a process of its own, as an operator runs it: HF_ENDPOINT from the environment, the real
    tag's repository and file name, and a file that is not a ViT-B-32 checkpoint refused."""
    repo = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    assert clip_hub_file("ViT-B-32", "laion2b_s34b_b79k") == HubFile(
        repo_id=repo, filenames=("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    )
    hub.serve(repo, "open_clip_model.safetensors", safetensors_bytes(tiny_state))
    out = tmp_path / "weights"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "SIMSEARCH_"))}
    env |= {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_OFFLINE": "0",
        "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
        "DJANGO_SETTINGS_MODULE": "simsearch_project.test_settings",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "fetch_weights", "--anomaly-backbone", "none", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "CommandError" in result.stderr and "Traceback" not in result.stderr
    assert f"{repo}/open_clip_model.safetensors does not load into open_clip's ViT-B-32" in result.stderr
    assert ("GET", f"/{repo}/resolve/main/open_clip_model.safetensors") in hub.requests
    assert list(out.iterdir()) == []


def test_the_anomaly_hub_repositories_are_timms_torchvision_weights() -> None:
    from timm.models import get_pretrained_cfg

    for backbone, repo in ANOMALY_HUB_REPOS.items():
        cfg = get_pretrained_cfg(f"{backbone}.tv_in1k")
        assert cfg.hf_hub_id == repo and "download.pytorch.org/models" in cfg.url


def test_clip_file_names_follow_open_clips_own_rule() -> None:
    from open_clip.pretrained import _get_safe_alternatives, get_pretrained_cfg

    for model_name, tag in open_clip.list_pretrained():
        repo_id, filename = os.path.split(get_pretrained_cfg(model_name, tag)["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin"
        expected = (*_get_safe_alternatives(filename), filename)
        assert clip_hub_file(model_name, tag) == HubFile(repo_id=repo_id, filenames=expected), (model_name, tag)


# --- SIMSEARCH_PRETRAINED_SHA256 on the server -----------------------------------------------------


@pytest.fixture
def tiny_checkpoint_file(tiny_checkpoint: bytes, tmp_path: Path) -> Path:
    path = tmp_path / "tiny.bin"
    path.write_bytes(tiny_checkpoint)
    return path


def test_a_checkpoint_with_another_sha256_is_refused_at_load(tiny_checkpoint_file: Path, settings) -> None:
    actual = sha256_of(tiny_checkpoint_file)
    settings.SIMSEARCH_MODEL = TINY
    settings.SIMSEARCH_PRETRAINED = str(tiny_checkpoint_file)
    settings.SIMSEARCH_PRETRAINED_SHA256 = "0" * 64
    with pytest.raises(WeightsUnavailable) as caught:
        current_embedder()
    message = str(caught.value)
    assert f"has sha256 {actual}, but SIMSEARCH_PRETRAINED_SHA256 expects {'0' * 64}" in message
    assert "fetch_weights" in message
    settings.SIMSEARCH_PRETRAINED_SHA256 = actual.upper()  # as some tools print it
    assert not current_embedder().is_untrained
    settings.SIMSEARCH_PRETRAINED_SHA256 = ""
    assert current_embedder().fingerprint_source["weights"] == f"file:sha256={actual}"


def test_a_build_with_the_wrong_checkpoint_fails_naming_both_hashes(
    tiny_checkpoint_file: Path, settings, product, scratch
) -> None:
    from catalog.models import ImageType
    from catalog.services import image_create
    from indexing.models import BuildStatus
    from indexing.services import index_build_request, index_build_run
    from tests.helpers import image_bytes

    image_create(data=image_bytes(seed=1), image_type=ImageType.DEFECT, product=product, defect_type=scratch)
    settings.SIMSEARCH_MODEL = TINY
    settings.SIMSEARCH_PRETRAINED = str(tiny_checkpoint_file)
    settings.SIMSEARCH_PRETRAINED_SHA256 = "ab" * 32
    (build,) = index_build_request(index_type="defect")
    build = index_build_run(build_id=build.pk)
    assert build.status == BuildStatus.FAILED and not build.is_active
    assert f"has sha256 {sha256_of(tiny_checkpoint_file)}" in build.error
    assert f"SIMSEARCH_PRETRAINED_SHA256 expects {'ab' * 32}" in build.error


def _import_settings(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "SIMSEARCH_"))}
    return subprocess.run(
        [sys.executable, "-c", "import simsearch_project.settings"],
        cwd=ROOT,
        env={**clean, "DJANGO_DEBUG": "true", "SIMSEARCH_DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("pretrained", ["laion2b_s34b_b79k", "untrained"])
def test_a_sha256_without_a_checkpoint_file_is_refused_at_start_up(tmp_path: Path, pretrained: str) -> None:
    result = _import_settings(tmp_path, SIMSEARCH_PRETRAINED=pretrained, SIMSEARCH_PRETRAINED_SHA256="a" * 64)
    assert result.returncode != 0
    assert f"SIMSEARCH_PRETRAINED_SHA256 is set, but SIMSEARCH_PRETRAINED='{pretrained}' is not a checkpoint file" in (
        result.stderr
    )


def test_a_malformed_sha256_is_refused_and_a_file_path_is_accepted(tmp_path: Path) -> None:
    bad = _import_settings(tmp_path, SIMSEARCH_PRETRAINED="/opt/models/clip.bin", SIMSEARCH_PRETRAINED_SHA256="abc")
    assert bad.returncode != 0 and "SIMSEARCH_PRETRAINED_SHA256 must be the 64 hex digits" in bad.stderr
    good = _import_settings(tmp_path, SIMSEARCH_PRETRAINED="/opt/models/clip.bin", SIMSEARCH_PRETRAINED_SHA256="A" * 64)
    assert good.returncode == 0, good.stderr


# --- make demo ----------------------------------------------------------------------------------------


def test_the_demo_fallback_prints_the_fetch_weights_commands(settings) -> None:
    stdout, stderr = io.StringIO(), io.StringIO()
    settings.SIMSEARCH_PRETRAINED = "untrained"
    call_command("demo_weights", stdout=stdout, stderr=stderr)
    server_dir = settings.BASE_DIR / "var" / "weights"
    assert stdout.getvalue().strip() == "untrained"
    assert (
        "  make venv && DJANGO_DEBUG=true .venv/bin/python manage.py fetch_weights --model ViT-B-32 "
        f"--pretrained laion2b_s34b_b79k --anomaly-backbone resnet18 --out weights --server-dir {server_dir}\n"
    ) in stderr.getvalue()
    assert f"  set -a && . {server_dir}/simsearch-weights.env && set +a && make demo\n" in stderr.getvalue()


def test_the_demo_falls_back_when_the_checkpoint_has_another_sha256(tiny_checkpoint_file: Path, settings) -> None:
    stdout, stderr = io.StringIO(), io.StringIO()
    settings.SIMSEARCH_MODEL = TINY
    settings.SIMSEARCH_PRETRAINED = str(tiny_checkpoint_file)
    settings.SIMSEARCH_PRETRAINED_SHA256 = "0" * 64
    call_command("demo_weights", stdout=stdout, stderr=stderr)
    assert stdout.getvalue().strip() == "untrained" and "SIMSEARCH_PRETRAINED_SHA256 expects" in stderr.getvalue()
    settings.SIMSEARCH_PRETRAINED_SHA256 = sha256_of(tiny_checkpoint_file)
    stdout = io.StringIO()
    call_command("demo_weights", stdout=stdout, stderr=stderr)
    assert stdout.getvalue().strip() == str(tiny_checkpoint_file)
