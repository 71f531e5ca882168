"""``ensure_demo_user``: `make run` creates the demo login once and never resets it."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

pytestmark = pytest.mark.django_db


def ensure_demo_user() -> str:
    out = StringIO()
    call_command("ensure_demo_user", stdout=out)
    return out.getvalue()


def test_the_demo_login_is_created_when_missing(settings):
    settings.DEBUG = True
    assert "Created demo login" in ensure_demo_user()
    user = get_user_model().objects.get(username="demo")
    assert user.check_password("demo")
    assert (user.is_staff, user.is_superuser) == (True, True)


def test_an_existing_demo_login_keeps_its_password_hash_and_flags(settings):
    settings.DEBUG = True
    user = get_user_model().objects.create_user("demo", password="changed by its owner")
    before = user.password
    assert "left as it is" in ensure_demo_user()
    user.refresh_from_db()
    assert (user.password, user.is_staff, user.is_superuser) == (before, False, False)


def test_nothing_is_created_with_debug_off(settings):
    settings.DEBUG = False
    assert "DEBUG is off" in ensure_demo_user()
    assert not get_user_model().objects.filter(username="demo").exists()
