"""Model weights for an air-gapped server, fetched on a machine with internet. Django-free.

`fetch_weights` downloads the open_clip checkpoint (and the anomaly check's ResNet weights) from the
Hugging Face hub, exactly as open_clip and timm resolve them, proves that each file loads the way the
server will load it, and returns the settings to copy to the server with each file's sha256.

`simsearch_project.settings` imports `is_checkpoint_path` from here: keep torch, open_clip and
huggingface_hub imports inside the functions that need them.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
DEFAULT_ANOMALY_BACKBONE = "resnet18"
NO_ANOMALY_BACKBONE = "none"
ENV_FILE_NAME = "simsearch-weights.env"
SUMS_FILE_NAME = "SHA256SUMS"
CHECKPOINT_SUFFIXES = (".pt", ".bin", ".safetensors", ".pth")
# torchvision's own ImageNet weights (IMAGENET1K_V1), as timm publishes them on the hub ("tv_in1k"):
# the same tensors under torchvision's key names. Safetensors first (no pickle), as timm loads them.
ANOMALY_HUB_REPOS = {
    "resnet18": "timm/resnet18.tv_in1k",
    "resnet34": "timm/resnet34.tv_in1k",
    "resnet50": "timm/resnet50.tv_in1k",
    "wide_resnet50_2": "timm/wide_resnet50_2.tv_in1k",
}
ANOMALY_HUB_FILES = ("model.safetensors", "pytorch_model.bin")
# open_clip's names for a hub checkpoint: open_clip_pytorch_model.bin, or its safetensors twin.
OPEN_CLIP_HUB_FILE = "open_clip_pytorch_model.bin"
OPEN_CLIP_HUB_SAFE_FILE = "open_clip_model.safetensors"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class WeightsFetchError(Exception):
    """The weights could not be fetched or do not load; the message says what to do."""


def is_checkpoint_path(value: str) -> bool:
    """Whether SIMSEARCH_PRETRAINED names a checkpoint file (as opposed to an open_clip tag or
    'untrained'): the one rule the embedder and the settings' start-up checks share."""
    return value.startswith(("/", ".", "~")) or Path(value).suffix in CHECKPOINT_SUFFIXES


def is_sha256_hex(value: str) -> bool:
    return _SHA256_HEX.fullmatch(value) is not None


@dataclass(frozen=True)
class HubFile:
    """A file on the hub: the repository and the names to try, preferred first."""

    repo_id: str
    filenames: tuple[str, ...]


def _safe_alternatives(filename: str) -> tuple[str, ...]:
    # open_clip's rule (open_clip.pretrained._get_safe_alternatives): try the safetensors twin first.
    if filename == OPEN_CLIP_HUB_FILE:
        return (OPEN_CLIP_HUB_SAFE_FILE, filename)
    if filename.endswith((".bin", ".pth")):
        return (filename[:-4] + ".safetensors", filename)
    return (filename,)


def clip_hub_file(model_name: str, pretrained: str) -> HubFile:
    """Where open_clip downloads `pretrained` for `model_name` from."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    import indexing.embedder  # noqa: F401  (registers the project's own architectures with open_clip)

    if model_name not in open_clip.list_models():
        raise WeightsFetchError(
            f"--model {model_name!r} is not an open_clip architecture. Models with downloadable weights: "
            f"{', '.join(sorted({name for name, _ in open_clip.list_pretrained()}))}."
        )
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if pretrained not in tags:
        raise WeightsFetchError(
            f"--pretrained {pretrained!r} is not an open_clip tag for {model_name}. "
            + (f"Its tags: {', '.join(tags)}." if tags else f"{model_name} has no downloadable weights.")
        )
    hub = get_pretrained_cfg(model_name, pretrained).get("hf_hub", "")
    if not hub:
        raise WeightsFetchError(
            f"open_clip publishes {model_name}/{pretrained} outside the Hugging Face hub; choose another tag "
            f"({', '.join(tags)})."
        )
    # 'org/repo/' means open_clip's default file name; 'org/repo/file.pt' names the file.
    repo_id, filename = os.path.split(hub)
    return HubFile(repo_id=repo_id, filenames=_safe_alternatives(filename or OPEN_CLIP_HUB_FILE))


def anomaly_hub_file(backbone: str) -> HubFile:
    if backbone not in ANOMALY_HUB_REPOS:
        raise WeightsFetchError(
            f"--anomaly-backbone {backbone!r} is not supported; use one of {', '.join(ANOMALY_HUB_REPOS)} "
            f"or {NO_ANOMALY_BACKBONE!r}."
        )
    return HubFile(repo_id=ANOMALY_HUB_REPOS[backbone], filenames=ANOMALY_HUB_FILES)


@dataclass(frozen=True)
class FetchedFile:
    path: Path
    sha256: str
    source: str  # where it came from: hub repo, commit and file name
    settings: dict[str, str]


@dataclass(frozen=True)
class FetchResult:
    files: list[FetchedFile]
    env_file: Path
    server_dir: str
    settings: dict[str, str]

    def settings_lines(self) -> list[str]:
        return [f"{name}={shlex.quote(value)}" for name, value in self.settings.items()]


@dataclass(frozen=True)
class _Download:
    path: Path
    filename: str
    commit: str
    sha256: str


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _download(hub: HubFile, into: Path, log: Callable[[str], None]) -> _Download:
    """The first of `hub.filenames` the hub has, downloaded into `into` and checked against the hub's
    sha256 (the ETag of a large file). HEAD requests first, without retries, so that an unreachable
    hub or a missing file is reported at once rather than after minutes of back-off."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from indexing.embedder import _sha256_file

    endpoint = _hub_endpoint()
    for filename in hub.filenames:
        url = hf_hub_url(hub.repo_id, filename)
        try:
            metadata = get_hf_file_metadata(url)
        except EntryNotFoundError:
            continue
        except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as exc:
            raise WeightsFetchError(
                f"The model hub at {endpoint} has no public repository {hub.repo_id} ({type(exc).__name__})."
            ) from exc
        except OfflineModeIsEnabled as exc:
            raise WeightsFetchError(
                "HF_HUB_OFFLINE is set, so nothing can be downloaded. Run this command without HF_HUB_OFFLINE "
                "on a machine with internet."
            ) from exc
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status == 404:
                continue
            raise WeightsFetchError(f"The model hub at {endpoint} answered HTTP {status} for {url}.") from exc
        except Exception as exc:  # connection refused, DNS, TLS, timeouts, proxies
            raise WeightsFetchError(
                f"Could not reach the model hub at {endpoint} ({type(exc).__name__}: {exc}). Run this on a "
                f"machine with internet access; behind a mirror or proxy set HF_ENDPOINT / HTTPS_PROXY."
            ) from exc
        log(f"Downloading {hub.repo_id}/{filename} from {endpoint} ...")
        try:
            path = Path(hf_hub_download(hub.repo_id, filename, local_dir=into))
        except Exception as exc:
            raise WeightsFetchError(
                f"Downloading {url} failed ({type(exc).__name__}: {exc}). Run the command again."
            ) from exc
        sha256 = _sha256_file(path)
        expected = (metadata.etag or "").lower()
        if is_sha256_hex(expected) and sha256 != expected:
            raise WeightsFetchError(
                f"The download of {url} is corrupt: its sha256 is {sha256}, the hub says {expected}. "
                f"Run the command again."
            )
        return _Download(path=path, filename=filename, commit=metadata.commit_hash or "", sha256=sha256)
    raise WeightsFetchError(
        f"The model hub at {endpoint} has none of {', '.join(hub.filenames)} in {hub.repo_id} (HTTP 404)."
    )


def _prepare_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise WeightsFetchError(f"Cannot write to {out_dir}: {exc.strerror or exc}. Choose another --out.") from exc


def _fetch_clip(
    *, model_name: str, pretrained: str, work: Path, out_dir: Path, server_dir: str, log: Callable[[str], None]
) -> FetchedFile:
    from indexing.embedder import Embedder, WeightsUnavailable

    hub = clip_hub_file(model_name, pretrained)
    download = _download(hub, work, log)
    name = f"open_clip_{model_name}_{pretrained}{Path(download.filename).suffix}"
    staged = work / name
    download.path.replace(staged)
    log(f"Checking that {name} loads into {model_name} ...")
    try:
        embedder = Embedder(model_name=model_name, pretrained=str(staged))
    except WeightsUnavailable as exc:
        raise WeightsFetchError(
            f"{hub.repo_id}/{download.filename} does not load into open_clip's {model_name}: {exc}"
        ) from exc
    if embedder.is_untrained or embedder.fingerprint_source["weights"] != f"file:sha256={download.sha256}":
        raise WeightsFetchError(f"{name} did not load as a checkpoint file.")  # a broken invariant, not user error
    target = out_dir / name
    staged.replace(target)
    return FetchedFile(
        path=target,
        sha256=download.sha256,
        source=f"{hub.repo_id}@{download.commit or 'main'}/{download.filename}",
        settings={
            "SIMSEARCH_MODEL": model_name,
            "SIMSEARCH_PRETRAINED": str(PurePosixPath(server_dir) / name),
            "SIMSEARCH_PRETRAINED_SHA256": download.sha256,
        },
    )


def _read_state_dict(path: Path) -> dict:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return state


def _fetch_anomaly(
    *, backbone: str, work: Path, out_dir: Path, server_dir: str, log: Callable[[str], None]
) -> FetchedFile:
    import torch
    import torchvision

    from indexing.anomaly import PatchFeatureExtractor
    from indexing.embedder import WeightsUnavailable, _sha256_file

    hub = anomaly_hub_file(backbone)
    download = _download(hub, work, log)
    # Loaded strictly into torchvision's network and saved as its state_dict: a file that
    # indexing.anomaly reads with torch.load(weights_only=True), whatever format the hub had.
    network = getattr(torchvision.models, backbone)(weights=None)
    try:
        network.load_state_dict(_read_state_dict(download.path), strict=True)
    except Exception as exc:
        raise WeightsFetchError(
            f"{hub.repo_id}/{download.filename} is not a torchvision {backbone} state_dict: {exc}"
        ) from exc
    name = f"{backbone}-imagenet.pth"
    staged = work / name
    torch.save(network.state_dict(), staged)
    log(f"Checking that {name} loads as the anomaly check's {backbone} ...")
    try:
        extractor = PatchFeatureExtractor(weights=str(staged), backbone=backbone)
    except WeightsUnavailable as exc:
        raise WeightsFetchError(f"{name} does not load into the anomaly check: {exc}") from exc
    if extractor.is_untrained:
        raise WeightsFetchError(f"{name} did not load as a checkpoint file.")  # a broken invariant
    sha256 = _sha256_file(staged)
    target = out_dir / name
    staged.replace(target)
    return FetchedFile(
        path=target,
        sha256=sha256,
        source=f"{hub.repo_id}@{download.commit or 'main'}/{download.filename} (sha256 {download.sha256}), "
        f"re-saved as a torchvision state_dict",
        settings={
            "SIMSEARCH_ANOMALY_BACKBONE": backbone,
            "SIMSEARCH_ANOMALY_WEIGHTS": str(PurePosixPath(server_dir) / name),
            "SIMSEARCH_ANOMALY_WEIGHTS_SHA256": sha256,
        },
    )


def _write_outputs(out_dir: Path, files: list[FetchedFile], settings: dict[str, str], server_dir: str) -> Path:
    sums = "".join(f"{item.sha256}  {item.path.name}\n" for item in files)
    (out_dir / SUMS_FILE_NAME).write_text(sums)
    header = [
        "# simsearch weights, written by `manage.py fetch_weights`.",
        f"# Copy this folder to {server_dir} on the server (check it there: cd {server_dir} && "
        f"sha256sum -c {SUMS_FILE_NAME}),",
        "# then set these for both the web and the queue services, restart them and rebuild the indexes.",
        *(f"# {item.path.name}: sha256 {item.sha256}, from {item.source}" for item in files),
    ]
    env_file = out_dir / ENV_FILE_NAME
    lines = [*header, *(f"{name}={shlex.quote(value)}" for name, value in settings.items())]
    env_file.write_text("\n".join(lines) + "\n")
    return env_file


def fetch_weights(
    *,
    model_name: str = DEFAULT_MODEL,
    pretrained: str = DEFAULT_PRETRAINED,
    anomaly_backbone: str | None = DEFAULT_ANOMALY_BACKBONE,
    out_dir: Path,
    server_dir: str | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> FetchResult:
    """Download, verify and write the weights into `out_dir`; the settings name them under
    `server_dir` (default: `out_dir` itself), where they will be on the server."""
    clip_hub_file(model_name, pretrained)  # bad arguments are refused before any disk or network work
    if anomaly_backbone is not None:
        anomaly_hub_file(anomaly_backbone)
    out_dir = Path(out_dir).expanduser().resolve()
    server_dir = server_dir or str(out_dir)
    if not PurePosixPath(server_dir).is_absolute():
        raise WeightsFetchError(f"--server-dir must be an absolute path, not {server_dir!r}.")
    from huggingface_hub import constants

    if constants.is_offline_mode():
        raise WeightsFetchError(
            "HF_HUB_OFFLINE is set, so nothing can be downloaded. Run this command without HF_HUB_OFFLINE "
            "on a machine with internet."
        )
    _prepare_out_dir(out_dir)
    # Downloads land in a scratch folder beside the results: a file that fails its checks never
    # appears under its final name, and nothing is left in a cache elsewhere.
    work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=out_dir))
    try:
        files = [
            _fetch_clip(
                model_name=model_name, pretrained=pretrained, work=work, out_dir=out_dir, server_dir=server_dir, log=log
            )
        ]
        if anomaly_backbone is not None:
            files.append(
                _fetch_anomaly(backbone=anomaly_backbone, work=work, out_dir=out_dir, server_dir=server_dir, log=log)
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    settings = {name: value for item in files for name, value in item.settings.items()}
    env_file = _write_outputs(out_dir, files, settings, server_dir)
    return FetchResult(files=files, env_file=env_file, server_dir=server_dir, settings=settings)


def air_gap_commands(*, server_dir: str, model_name: str = DEFAULT_MODEL, pretrained: str = DEFAULT_PRETRAINED) -> str:
    """What to run to put real weights on a machine without internet (printed by `make demo`)."""
    folder = PurePosixPath(server_dir).name
    env_file = PurePosixPath(server_dir) / ENV_FILE_NAME
    return (
        "On a machine with internet, in a checkout of this project, run:\n\n"
        f"  make venv && DJANGO_DEBUG=true .venv/bin/python manage.py fetch_weights --model {model_name} "
        f"--pretrained {pretrained} --anomaly-backbone {DEFAULT_ANOMALY_BACKBONE} --out {folder} "
        f"--server-dir {server_dir}\n\n"
        f"Copy the folder {folder}/ it writes to {server_dir} on this machine. The settings it prints "
        f"(SIMSEARCH_MODEL, SIMSEARCH_PRETRAINED, SIMSEARCH_PRETRAINED_SHA256 and SIMSEARCH_ANOMALY_*) are also in "
        f"{env_file}; set them and start the demo again:\n\n"
        f"  set -a && . {env_file} && set +a && make demo\n"
    )
