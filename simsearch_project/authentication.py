"""Token authentication that keeps answering while the database is briefly unreachable."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db import InterfaceError, OperationalError
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token

from simsearch_project import credential_cache


class CachedTokenAuthentication(TokenAuthentication):
    """DRF token auth. Each token the database confirms is remembered (credential_cache) for
    SIMSEARCH_AUTH_OUTAGE_CACHE_SECONDS, so searches from the line keep working from the local
    index cache while the database is down. Only then is the memory used, and a token deleted, a
    user deactivated or deleted, or a user losing a group or permission is forgotten at once."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Token | None]:
        try:
            user, token = super().authenticate_credentials(key)
        except (OperationalError, InterfaceError):
            remembered = credential_cache.recall(token_key=key)
            if remembered is None:
                raise
            return get_user_model()(**remembered), None
        except exceptions.AuthenticationFailed:
            credential_cache.forget([key])  # revoked by a path that sent no signal (raw SQL, ...)
            raise
        credential_cache.remember(token_key=key, user=user)
        return user, token
