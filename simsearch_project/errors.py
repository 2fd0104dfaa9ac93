"""The small set of exceptions services raise. The API's exception handler maps them to JSON."""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 400
    code = "invalid"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code


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
