"""The token check remembered for a database outage is forgotten the moment the credential is
revoked (issue 8, item 8), and SIMSEARCH_AUTH_OUTAGE_CACHE_SECONDS=0 remembers nothing. (The
outage itself, with real server processes: tests/faults/test_faults.py.)"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.cache import caches
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from simsearch_project import credential_cache
from tests.conftest import token_client

pytestmark = pytest.mark.django_db(transaction=True)  # revocations also act on commit


@pytest.fixture
def member(django_user_model):  # type: ignore[no-untyped-def]
    """A user in a group with one permission, with one of its own, and a token it has used."""
    group = Group.objects.create(name="Line PC test")
    permission = Permission.objects.get(codename="register_query_image")
    group.permissions.add(permission)
    user = django_user_model.objects.create_user("cam-7", password="pw-cam-123")
    user.groups.add(group)
    user.user_permissions.add(Permission.objects.get(codename="view_product"))
    client = token_client(user)
    assert client.get("/api/products/").status_code == 200
    key = Token.objects.get(user=user).key
    assert credential_cache.recall(token_key=key) == {
        "pk": user.pk,
        "username": "cam-7",
        "is_staff": False,
        "is_active": True,
    }
    return user, group, permission, key


def _deactivate(user, group, permission) -> None:  # type: ignore[no-untyped-def]
    user.is_active = False
    user.save()


def _demote(user, group, permission) -> None:  # type: ignore[no-untyped-def]
    user.is_staff = False
    user.save(update_fields=["is_staff"])


REVOCATIONS: dict[str, Callable] = {
    "token deleted": lambda user, group, permission: Token.objects.filter(user=user).delete(),
    "user deactivated": _deactivate,
    "user saved with changed fields": _demote,
    "user deleted": lambda user, group, permission: user.delete(),
    "user.groups.remove": lambda user, group, permission: user.groups.remove(group),
    "user.groups.clear": lambda user, group, permission: user.groups.clear(),
    "group.user_set.remove": lambda user, group, permission: group.user_set.remove(user),
    "group.user_set.clear": lambda user, group, permission: group.user_set.clear(),
    "group.permissions.remove": lambda user, group, permission: group.permissions.remove(permission),
    "group.permissions.clear": lambda user, group, permission: group.permissions.clear(),
    "permission.group_set.remove": lambda user, group, permission: permission.group_set.remove(group),
    "permission.group_set.clear": lambda user, group, permission: permission.group_set.clear(),
    "group deleted": lambda user, group, permission: group.delete(),
    "user.user_permissions.remove": lambda user, group, permission: user.user_permissions.remove(
        Permission.objects.get(codename="view_product")
    ),
    "user.user_permissions.clear": lambda user, group, permission: user.user_permissions.clear(),
    "permission.user_set.clear": lambda user, group, permission: Permission.objects.get(
        codename="view_product"
    ).user_set.clear(),
}


@pytest.mark.parametrize("revoke", REVOCATIONS.values(), ids=REVOCATIONS.keys())
def test_a_revoked_credential_is_forgotten(member, revoke, django_user_model):
    user, group, permission, key = member
    bystander = django_user_model.objects.create_user("cam-8", password="pw-cam-123")
    other = token_client(bystander)
    assert other.get("/api/products/").status_code == 200
    other_key = Token.objects.get(user=bystander).key
    revoke(user, group, permission)
    assert credential_cache.recall(token_key=key) is None
    assert credential_cache.recall(token_key=other_key) is not None  # only the revoked user's entry went


def test_adding_rights_or_signing_in_keeps_the_entry(member):
    user, group, permission, key = member
    user.groups.add(Group.objects.create(name="Another"))
    group.permissions.add(Permission.objects.get(codename="view_image"))
    user.save(update_fields=["last_login"])
    assert credential_cache.recall(token_key=key) is not None


def token_client_with_key(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def test_a_refused_token_is_forgotten_even_without_a_signal(member):
    user, group, permission, key = member
    Token.objects.filter(user=user).update(key="0" * 40)  # a bulk update sends no signal
    assert token_client_with_key(key).get("/api/products/").status_code == 401
    assert credential_cache.recall(token_key=key) is None


def test_setting_zero_turns_the_fallback_off(settings, django_user_model):
    settings.SIMSEARCH_AUTH_OUTAGE_CACHE_SECONDS = 0
    user = django_user_model.objects.create_user("cam-9", password="pw-cam-123")
    assert token_client(user).get("/api/products/").status_code == 200
    key = Token.objects.get(user=user).key
    assert caches[credential_cache.CACHE_ALIAS].get(credential_cache._key(key)) is None  # nothing remembered
    settings.SIMSEARCH_AUTH_OUTAGE_CACHE_SECONDS = 600
    credential_cache.remember(token_key=key, user=user)
    assert credential_cache.recall(token_key=key) is not None
    settings.SIMSEARCH_AUTH_OUTAGE_CACHE_SECONDS = 0
    assert credential_cache.recall(token_key=key) is None  # an entry from before is not used either
