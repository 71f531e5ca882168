"""Real servers for integration tests: daphne processes on loopback that share the test
database (and Redis, when given), and logged-in clients for them.

The test database must be visible to other processes, so SQLite runs use a file (see
``django_db_modify_db_settings`` in conftest) and every test that starts a server is
``django_db(transaction=True)``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url() -> str:
    """A URL for the database the tests are using right now (the test database)."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    host, port = db.get("HOST") or "127.0.0.1", db.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


@dataclass
class DaphneServer:
    """One daphne process serving chatproject.asgi on a free loopback port."""

    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, log_dir: Path) -> DaphneServer:
        self.log_path = log_dir / f"daphne-{self.port}.log"
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
             "--application-close-timeout", "5", "chatproject.asgi:application"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daphne exited early:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"daphne did not listen within 30 s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def kill(self) -> None:
        """kill -9: the process dies mid-whatever, as in a crash."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def server_env(*, redis_url: str | None, llm_base_url: str | None, **extra: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMING_", "LLM_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="chatproject.settings",
        DATABASE_URL=database_url(),
        DATABASE_POOL="false",
        PYTHONUNBUFFERED="1",
        LLM_DEMO_TOKENS_PER_SECOND="0",
    )
    env.pop("REDIS_URL", None)
    if redis_url:
        env["REDIS_URL"] = redis_url
    if llm_base_url:
        env.update(LLM_PROVIDER="openai", LLM_BASE_URL=llm_base_url, LLM_API_KEY="test")
    env.update({key: str(value) for key, value in extra.items()})
    return env


def session_cookie(user: Any) -> str:
    """A session for ``user`` in the shared database, as a Cookie header value."""
    from django.test import Client

    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


def ws_headers(server: DaphneServer, cookie: str | None) -> dict[str, str]:
    headers = {"Origin": f"http://localhost:{server.port}"}
    if cookie:
        headers["Cookie"] = cookie
    return headers
