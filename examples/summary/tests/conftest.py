"""Fixtures of the example's end-to-end test: a SQLite file as the test database, and
a real daphne process serving the example on it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.db import connection

PROJECT = Path(__file__).resolve().parent.parent
ASGI_APP = "summaryproject.asgi:application"


@pytest.fixture(scope="session")
def django_db_modify_db_settings(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A file, not SQLite's default in-memory test database: daphne must share it."""
    from django.conf import settings

    path = tmp_path_factory.mktemp("db") / "test.sqlite3"
    settings.DATABASES["default"].setdefault("TEST", {})["NAME"] = str(path)


@dataclass
class Server:
    port: int
    log: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(transactional_db: None, tmp_path: Path) -> Iterator[Server]:
    """daphne on loopback with the example's settings, on the test database."""
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "summaryproject.settings",
        "SQLITE_PATH": connection.settings_dict["NAME"],
        "SUMMARY_WORD_PAUSE": "0.04",
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "daphne.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), ASGI_APP],
            cwd=PROJECT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daphne did not start:\n{log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        yield Server(port, log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
        print(log.read_text(errors="replace"))  # shown by pytest when the test failed


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under make example-test the component must be its installed wheel, and nothing
    of the repository may be importable."""
    if os.environ.get("EXAMPLE_FROM_WHEEL") != "1":
        return
    import importlib.util

    import streaming

    if "site-packages" not in Path(streaming.__file__).parts:
        pytest.exit(f"streaming comes from {streaming.__file__}, not its wheel", returncode=1)
    if importlib.util.find_spec("chatproject") is not None:
        pytest.exit("chatproject is importable: not a fresh environment", returncode=1)
