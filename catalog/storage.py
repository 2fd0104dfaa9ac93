"""Reading objects from the configured storage, with one meaning for "not there"."""

from __future__ import annotations

from django.core.files.storage import Storage, default_storage


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
