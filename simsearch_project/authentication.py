"""Token authentication that keeps answering while the database is briefly unreachable."""

from __future__ import annotations

import hashlib
from typing import Any

from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import InterfaceError, OperationalError
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token

CACHE_SECONDS = 600


def _cache_key(key: str) -> str:
    return "simsearch:token:" + hashlib.sha256(key.encode()).hexdigest()


class CachedTokenAuthentication(TokenAuthentication):
    """DRF token auth; each valid token is remembered in the cache (Redis when configured) for
    ten minutes, so searches from the line keep working from the local index cache while the
    database is down. A revoked token stops working within those ten minutes at most."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Token | None]:
        try:
            user, token = super().authenticate_credentials(key)
        except (OperationalError, InterfaceError):
            remembered = cache.get(_cache_key(key))
            if remembered is None:
                raise
            user = get_user_model()(**remembered)
            return user, None
        cache.set(
            _cache_key(key),
            {"pk": user.pk, "username": user.get_username(), "is_staff": user.is_staff, "is_active": user.is_active},
            CACHE_SECONDS,
        )
        return user, token
