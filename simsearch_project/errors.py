"""The small set of exceptions services raise. The API's exception handler maps them to JSON."""

from __future__ import annotations

import re
from typing import Any


class ServiceError(Exception):
    status_code = 400
    code = "invalid"

    def __init__(self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        # Machine-readable facts a client acts on (e.g. the id of the image a duplicate matches).
        self.details = details or {}


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"


class StorageUnavailable(ServiceError):
    status_code = 503
    code = "storage_unavailable"


class ServiceUnavailable(ServiceError):
    status_code = 503
    code = "unavailable"


# An absolute file-system path standing on its own (after a space, quote, bracket or '='), not
# the path part of a URL.
_ABSOLUTE_PATH = re.compile(r"""(?:^|(?<=[\s'"(=]))/[^\s'"),]+""")


def safe_reason(exc: BaseException) -> str:
    """What went wrong, fit for a client or a build row: the exception's kind and its words with
    any server path taken out (where the media or data folder lives is nobody's business)."""
    if isinstance(exc, ServiceError):
        return exc.message
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    text = _ABSOLUTE_PATH.sub("<path>", text)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
