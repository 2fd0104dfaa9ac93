"""Reading objects from the configured storage, with one meaning for "not there"."""

from __future__ import annotations

import errno
import logging
import os
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from django.core.exceptions import SuspiciousOperation
from django.core.files.storage import FileSystemStorage, Storage, default_storage
from django.utils.translation import gettext

from simsearch_project.errors import NotFound, StorageUnavailable, safe_reason

logger = logging.getLogger(__name__)


def _is_not_found(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        return code in {"404", "NoSuchKey", "NotFound"}
    return False


# A local name that can never be an object: a folder, a path through a file, a name longer than
# the file system allows. They mean "no such object", not "storage down".
_NOT_AN_OBJECT_ERRNOS = {errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG}


def resolved_name(name: str, *, storage: Storage | None = None) -> str:
    """The name of the object that `name` opens. In a local folder a symbolic link can make one
    name open another object (a catalog file), or a file outside the folder: this is the name of
    the file reached, relative to the folder, and FileNotFoundError if that lies outside. Object
    stores have no links: there it is `name` itself."""
    storage = storage or default_storage
    if not isinstance(storage, FileSystemStorage):
        return name
    root = os.path.realpath(storage.location)
    try:
        real = os.path.realpath(storage.path(name))
    except (SuspiciousOperation, ValueError) as exc:
        raise FileNotFoundError(name) from exc
    if os.path.commonpath([root, real]) != root:
        raise FileNotFoundError(name)
    return os.path.relpath(real, root).replace(os.sep, "/")


def read_object(name: str, *, storage: Storage | None = None) -> bytes:
    """The bytes of `name`; FileNotFoundError if the storage has no such object (or, locally, if
    the name leads out of the media folder)."""
    storage = storage or default_storage
    try:
        resolved_name(name, storage=storage)
        with storage.open(name, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise
    except (SuspiciousOperation, ValueError) as exc:  # outside the media folder, a NUL byte, ...
        raise FileNotFoundError(name) from exc
    except OSError as exc:
        if exc.errno in _NOT_AN_OBJECT_ERRNOS:
            raise FileNotFoundError(name) from exc
        raise
    except Exception as exc:
        if _is_not_found(exc):
            raise FileNotFoundError(name) from exc
        raise


def read_stored(name: str) -> bytes:
    """`read_object` for request handling: a missing object is NotFound (404), any other
    storage failure StorageUnavailable (503). Messages name the key, never a server path."""
    try:
        return read_object(name)
    except FileNotFoundError:
        raise NotFound(gettext("No object “%(name)s” in the configured storage.") % {"name": name}) from None
    except Exception as exc:
        logger.exception("Reading %r from storage failed", name)
        raise StorageUnavailable(
            gettext("The storage could not be read (%(reason)s).") % {"reason": safe_reason(exc)}
        ) from exc


def delete_prefix(prefix: str, *, storage: Storage | None = None) -> int:
    """Delete every object under `prefix` (a folder locally, removed with its files; a key prefix
    on S3)."""
    storage = storage or default_storage
    deleted = 0
    try:
        folders, files = storage.listdir(prefix)
    except FileNotFoundError:
        return 0
    for name in files:
        storage.delete(f"{prefix.rstrip('/')}/{name}")
        deleted += 1
    for folder in folders:
        deleted += delete_prefix(f"{prefix.rstrip('/')}/{folder}", storage=storage)
    if isinstance(storage, FileSystemStorage):
        # A local folder outlives its files (S3 has no folders): remove it too, once empty.
        try:
            os.rmdir(storage.path(prefix))
        except OSError:  # not empty (a file written meanwhile), or already gone
            pass
    return deleted


# Parallel requests for the existence check: listings of separate folders on S3, or `exists`
# calls on a backend without a cheaper way.
EXISTS_CHECK_THREADS = 8


def existing_names(names: Iterable[str], *, storage: Storage | None = None) -> set[str]:
    """Which of `names` are objects in the storage, checked in bulk: on S3 one listing per
    folder (1,000 keys a request) instead of a HEAD per object, locally a stat per file, on any
    other backend `exists` in a few threads. A storage that cannot answer raises: an outage must
    not look like every object being gone."""
    storage = storage or default_storage
    wanted = set(names)
    if not wanted:
        return set()
    if isinstance(storage, FileSystemStorage):
        return {name for name in wanted if _is_local_file(storage, name)}
    if _is_s3(storage):
        return _existing_s3(storage, wanted)
    ordered = sorted(wanted)
    with ThreadPoolExecutor(max_workers=EXISTS_CHECK_THREADS) as pool:
        return {name for name, there in zip(ordered, pool.map(storage.exists, ordered), strict=True) if there}


def _is_local_file(storage: FileSystemStorage, name: str) -> bool:
    try:
        return os.path.isfile(storage.path(name))
    except SuspiciousOperation:  # a name outside the media folder is not an object of it
        return False


def _is_s3(storage: Storage) -> bool:
    try:
        from storages.backends.s3 import S3Storage
    except ImportError:  # django-storages is optional for local deployments
        return False
    return isinstance(storage, S3Storage)


def _existing_s3(storage: Storage, wanted: set[str]) -> set[str]:
    keys: dict[str, str] = {}  # object key (with the storage location) -> name
    for name in wanted:
        try:
            keys[storage._normalize_name(name)] = name  # type: ignore[attr-defined]
        except SuspiciousOperation:
            continue
    if not keys:
        return set()
    by_folder: dict[str, set[str]] = defaultdict(set)
    for key in keys:
        by_folder[key.rpartition("/")[0]].add(key)
    client = storage.connection.meta.client  # type: ignore[attr-defined]  # thread-safe, unlike the resource
    bucket = storage.bucket_name  # type: ignore[attr-defined]

    def listed(folder: str) -> set[str]:
        # The delimiter keeps a listing to the folder's own objects, not its subfolders'.
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=f"{folder}/" if folder else "", Delimiter="/", PaginationConfig={"PageSize": 1000}
        )
        return {obj["Key"] for page in pages for obj in page.get("Contents", ()) if obj["Key"] in by_folder[folder]}

    with ThreadPoolExecutor(max_workers=min(EXISTS_CHECK_THREADS, len(by_folder))) as pool:
        found = set().union(*pool.map(listed, by_folder))
    return {keys[key] for key in found}
