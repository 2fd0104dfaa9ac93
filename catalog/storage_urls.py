"""Turn a client's `storage_url` into a key of the configured storage, or refuse it.

The server never fetches a URL: it only accepts links that point into its own storage (the
configured S3 bucket, or this server's media URL) and then reads the key through the storage
API. Anything else (other hosts, internal addresses, file: URLs, '..') is refused."""

from __future__ import annotations

import posixpath
from urllib.parse import unquote, urlsplit

from django.conf import settings
from django.utils.translation import gettext

# S3 keys are at most 1,024 bytes; file systems allow 255 bytes a name.
MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 255


class RefusedStorageUrl(ValueError):
    pass


def _clean_key(raw: str) -> str:
    key = unquote(raw).lstrip("/")
    if not key or "\x00" in key or "\\" in key:
        raise RefusedStorageUrl(gettext("The storage key is empty or contains forbidden characters."))
    if any(part in ("..", ".") for part in key.split("/")) or posixpath.normpath(key) != key.rstrip("/"):
        raise RefusedStorageUrl(gettext("The storage key must not contain '..' or '.' segments."))
    if key.endswith("/"):
        raise RefusedStorageUrl(gettext("The storage key names a folder; name one object (an image file)."))
    if len(key.encode()) > MAX_KEY_BYTES or any(len(part.encode()) > MAX_SEGMENT_BYTES for part in key.split("/")):
        raise RefusedStorageUrl(
            gettext("The storage key is too long (at most %(key_bytes)s bytes, %(segment_bytes)s between slashes).")
            % {"key_bytes": MAX_KEY_BYTES, "segment_bytes": MAX_SEGMENT_BYTES}
        )
    return key


def _strip_location(key: str) -> str:
    location = (settings.STORAGES["default"].get("OPTIONS", {}).get("location") or "").strip("/")
    if location:
        if not key.startswith(location + "/"):
            raise RefusedStorageUrl(gettext("The object is outside this deployment's storage location."))
        return key[len(location) + 1 :]
    return key


def storage_key_from_url(url: str, *, request_host: str | None = None) -> str:
    """The storage key `url` names, if it points into the configured storage."""
    url = url.strip()
    if not url:
        raise RefusedStorageUrl(gettext("storage_url is empty."))
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    backend = settings.STORAGES["default"]["BACKEND"]
    is_s3 = backend.endswith("S3Storage")
    if scheme == "":
        # A bare key, as stored in `local_path` of a search result.
        return _clean_key(parts.path) if not parts.netloc else _refuse_host(parts.netloc)
    if scheme == "s3":
        bucket = settings.STORAGES["default"].get("OPTIONS", {}).get("bucket_name")
        if not is_s3 or parts.netloc != bucket:
            raise RefusedStorageUrl(gettext("The s3:// URL does not name this deployment's bucket."))
        return _strip_location(_clean_key(parts.path))
    if scheme not in ("http", "https"):
        raise RefusedStorageUrl(
            gettext("URLs with scheme “%(scheme)s” are not accepted; use a link into the storage.") % {"scheme": scheme}
        )
    host = (parts.hostname or "").lower()
    netloc = parts.netloc.rsplit("@", 1)[-1].lower()
    if is_s3:
        options = settings.STORAGES["default"]["OPTIONS"]
        endpoint = urlsplit(options.get("endpoint_url") or "https://s3.amazonaws.com")
        bucket = options["bucket_name"]
        if netloc == endpoint.netloc.lower() and parts.path.startswith(f"/{bucket}/"):
            return _strip_location(_clean_key(parts.path[len(bucket) + 2 :]))
        if netloc == f"{bucket}.{endpoint.netloc.lower()}":
            return _strip_location(_clean_key(parts.path))
        return _refuse_host(netloc)
    media = settings.MEDIA_URL
    allowed_hosts = {h.lower() for h in settings.ALLOWED_HOSTS if h and h != "*"}
    if request_host:
        allowed_hosts.add(request_host.split(":")[0].lower())
    if host in allowed_hosts and parts.path.startswith(media):
        return _clean_key(parts.path[len(media) :])
    return _refuse_host(netloc)


def _refuse_host(netloc: str) -> str:
    if netloc:
        raise RefusedStorageUrl(
            gettext(
                "%(host)s is not this deployment's storage; the server only reads objects from its own bucket or "
                "media folder and never fetches other URLs."
            )
            % {"host": netloc}
        )
    raise RefusedStorageUrl(
        gettext(
            "This URL is not this deployment's storage; the server only reads objects from its own bucket or "
            "media folder and never fetches other URLs."
        )
    )
