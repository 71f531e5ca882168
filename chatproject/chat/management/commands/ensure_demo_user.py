"""Create the demo login that `make run` prints, once, and only on a development server.

It runs at every start, so it must never touch an account that exists: a new password
hash (a new salt) would sign out every open tab, and restoring flags would undo what an
operator changed in the admin.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = (
        "Create the demo user (a staff account, for the admin too) when it does not exist "
        "and DEBUG is on; an existing account is left exactly as it is."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="demo")
        parser.add_argument("--password", default="demo")

    def handle(self, *args: Any, username: str, password: str, **options: Any) -> None:
        if not settings.DEBUG:
            self.stdout.write("DEBUG is off: no demo login created (a production server has none).")
            return
        users = get_user_model()._default_manager
        if users.filter(username=username).exists():
            self.stdout.write(
                f"Demo login {username!r} exists; left as it is (password {password!r} "
                "unless someone changed it)."
            )
            return
        users.create_superuser(username=username, password=password, email="")
        self.stdout.write(f"Created demo login: username {username!r}, password {password!r}")
