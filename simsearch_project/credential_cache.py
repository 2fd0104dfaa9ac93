"""Token checks remembered for a database outage, and forgotten as soon as a credential changes.

`CachedTokenAuthentication` remembers each token the database confirmed, for
SIMSEARCH_AUTH_OUTAGE_CACHE_SECONDS, and falls back to that memory only while the database is
unreachable. So that a revoked credential never comes back during an outage, the entry is removed
when the token is deleted (deleting a user deletes its token), when its user is saved
(deactivated, demoted), and when the user loses a group or a permission. The cache is the
"credentials" alias, which every process shares (Redis, or files in the data dir), so a revocation
in one process reaches all of them.

The receivers are connected in `SearchApiConfig.ready()`."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.cache import caches
from django.db import transaction
from django.db.models import Q
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete
from rest_framework.authtoken.models import Token

logger = logging.getLogger(__name__)

CACHE_ALIAS = "credentials"
# An unchanged entry is rewritten at most this often (each write is a file or a Redis round trip).
REFRESH_SECONDS = 60


def _key(token_key: str) -> str:
    return "simsearch:token:" + hashlib.sha256(token_key.encode()).hexdigest()


def _lifetime() -> int:
    return max(0, int(settings.SIMSEARCH_AUTH_OUTAGE_CACHE_SECONDS))


def remember(*, token_key: str, user: Any) -> None:
    """Note that the database just confirmed `token_key` for `user` (nothing with the fallback off)."""
    lifetime = _lifetime()
    if not lifetime:
        return
    record = {"pk": user.pk, "username": user.get_username(), "is_staff": user.is_staff, "is_active": user.is_active}
    cache = caches[CACHE_ALIAS]
    key = _key(token_key)
    try:
        known = cache.get(key)
        now = time.time()
        if known and known["user"] == record and now - known["checked_at"] < min(REFRESH_SECONDS, lifetime / 2):
            return
        cache.set(key, {"user": record, "checked_at": now}, lifetime)
    except Exception:  # the database answered: a cache that does not must not refuse the request
        logger.warning("Could not remember a token check for the outage fallback", exc_info=True)


def recall(*, token_key: str) -> dict[str, Any] | None:
    """The user fields last confirmed for `token_key`, if within the bound and the fallback is on."""
    if not _lifetime():
        return None
    try:
        known = caches[CACHE_ALIAS].get(_key(token_key))
    except Exception:
        logger.warning("The credentials cache is unavailable too", exc_info=True)
        return None
    return known["user"] if known else None


def forget(token_keys: Iterable[str]) -> None:
    keys = [_key(k) for k in token_keys]
    if not keys:
        return

    def delete() -> None:
        try:
            caches[CACHE_ALIAS].delete_many(keys)
        except Exception:
            logger.exception("Could not forget %s revoked token(s) in the credentials cache", len(keys))

    delete()
    # Again once the change is visible to other processes: a request checked in between (against
    # the old rows) may have remembered the credential again.
    transaction.on_commit(delete)


def forget_users(user_ids: Iterable[int | None]) -> None:
    ids = {i for i in user_ids if i is not None}
    if ids:
        forget(Token.objects.filter(user_id__in=ids).values_list("key", flat=True))


def _users_of_groups(group_ids: Iterable[int]) -> list[int]:
    return list(get_user_model().objects.filter(groups__in=list(group_ids)).values_list("pk", flat=True))


# --- receivers ------------------------------------------------------------------------------


def _token_deleted(sender: Any, instance: Token, **kwargs: Any) -> None:
    forget([instance.key])


def _user_saved(sender: Any, instance: Any, created: bool, update_fields: Any = None, **kwargs: Any) -> None:
    if created or (update_fields is not None and set(update_fields) <= {"last_login"}):
        return
    forget_users([instance.pk])


def _user_rights_changed(sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **kwargs: Any) -> None:
    """A user's groups or permissions, changed from either side of the relation."""
    if action not in ("post_remove", "pre_clear"):
        return
    if not reverse:  # user.groups / user.user_permissions .remove(...) or .clear()
        forget_users([instance.pk])
    elif action == "post_remove":  # group.user_set / permission.user_set .remove(users)
        forget_users(pk_set or ())
    else:  # group.user_set / permission.user_set .clear()
        forget_users(instance.user_set.values_list("pk", flat=True))


def _group_permissions_changed(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **kwargs: Any
) -> None:
    if action not in ("post_remove", "pre_clear"):
        return
    if not reverse:  # group.permissions.remove(...) / clear(): every member loses them
        forget_users(_users_of_groups([instance.pk]))
    elif action == "post_remove":  # permission.group_set.remove(groups)
        forget_users(_users_of_groups(pk_set or ()))
    else:
        forget_users(_users_of_groups(instance.group_set.values_list("pk", flat=True)))


def _group_deleted(sender: Any, instance: Group, **kwargs: Any) -> None:
    forget_users(_users_of_groups([instance.pk]))


def _permission_deleted(sender: Any, instance: Permission, **kwargs: Any) -> None:
    users = get_user_model().objects.filter(Q(user_permissions=instance) | Q(groups__permissions=instance))
    forget_users(users.values_list("pk", flat=True))


def connect_signals() -> None:
    user_model = get_user_model()
    post_delete.connect(_token_deleted, sender=Token, dispatch_uid="credential_cache.token_deleted")
    post_save.connect(_user_saved, sender=user_model, dispatch_uid="credential_cache.user_saved")
    m2m_changed.connect(
        _user_rights_changed, sender=user_model.groups.through, dispatch_uid="credential_cache.user_groups"
    )
    m2m_changed.connect(
        _user_rights_changed,
        sender=user_model.user_permissions.through,
        dispatch_uid="credential_cache.user_permissions",
    )
    m2m_changed.connect(
        _group_permissions_changed, sender=Group.permissions.through, dispatch_uid="credential_cache.group_permissions"
    )
    pre_delete.connect(_group_deleted, sender=Group, dispatch_uid="credential_cache.group_deleted")
    pre_delete.connect(_permission_deleted, sender=Permission, dispatch_uid="credential_cache.permission_deleted")
