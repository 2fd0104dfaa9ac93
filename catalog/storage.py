"""Reading objects from the configured storage, with one meaning for "not there"."""

from __future__ import annotations

from django.core.files.storage import Storage, default_storage

from simsearch_project.errors import NotFound, StorageUnavailable


def _is_not_found(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        return code in {"404", "NoSuchKey", "NotFound"}
    return False


def read_object(name: str, *, storage: Storage | None = None) -> bytes:
    """The bytes of `name`; FileNotFoundError if the storage has no such object."""
    storage = storage or default_storage
    try:
        with storage.open(name, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise
    except Exception as exc:
        if _is_not_found(exc):
            raise FileNotFoundError(name) from exc
        raise


def read_stored(name: str) -> bytes:
    """`read_object` for request handling: a missing object is NotFound (404), any other
    storage failure StorageUnavailable (503)."""
    try:
        return read_object(name)
    except FileNotFoundError:
        raise NotFound(f"No object {name!r} in the configured storage.") from None
    except Exception as exc:
        raise StorageUnavailable(f"The storage could not be read: {exc}") from exc


def delete_prefix(prefix: str, *, storage: Storage | None = None) -> int:
    """Delete every object under `prefix` (a folder locally, a key prefix on S3)."""
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
    return deleted
