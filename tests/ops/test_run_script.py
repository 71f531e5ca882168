"""``make run`` (scripts/run.py) as a newcomer meets it: a port already taken, the log
it prints, and what is left running when the server goes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import ROOT, free_port, server_env

RUN = [sys.executable, str(ROOT / "scripts" / "run.py")]


def children(pid: int) -> dict[int, str]:
    """The live child processes of ``pid``, with their command lines (from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(entry.name)] = cmdline
    return found


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


@dataclass
class Run:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_listening(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"run.py exited early:\n{self.log()}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        pytest.fail(f"run.py did not listen within {timeout} s:\n{self.log()}")

    def child(self, command: str) -> int:
        """The pid of run.py's child running ``manage.py <command>``."""
        return next(pid for pid, line in children(self.process.pid).items() if command in line)

    def stop(self) -> int:
        """Ctrl-C, as a developer stops it; its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        return self.process.wait(30)


@pytest.fixture
def start_run(transactional_db: None, tmp_path: Path) -> Iterator[Callable[..., Run]]:
    """scripts/run.py on a free port and the test database, in a session of its own so
    that it can be stopped whole."""
    runs: list[Run] = []

    def start(**env: str) -> Run:
        port = free_port()
        log_path = tmp_path / f"run-{port}.log"
        process = subprocess.Popen(
            RUN,
            cwd=ROOT,
            env=server_env(redis_url=None, llm_base_url=None, HOST="127.0.0.1", PORT=port, **env),
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        runs.append(Run(process, port, log_path))
        return runs[-1]

    yield start
    for run in runs:
        if run.process.poll() is None:
            run.stop()
        with contextlib.suppress(ProcessLookupError):  # whatever a failed run left behind
            os.killpg(run.process.pid, signal.SIGKILL)


def get(url: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_make_run_on_a_busy_port_exits_with_one_clear_line(tmp_path):
    database = tmp_path / "never-created.sqlite3"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = subprocess.Popen(
            RUN,
            cwd=ROOT,
            env={**os.environ, "PORT": str(port), "DATABASE_URL": f"sqlite:///{database}"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=60)
        finally:  # one that kept running (the bug) leaves nothing behind
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 1
    assert stderr.splitlines() == [
        f"Port {port} on 127.0.0.1 is already in use; stop what uses it or run "
        f"PORT={port + 1} make run"
    ]
    assert stdout == ""
    assert not database.exists()  # nothing was started: not even migrate


@pytest.mark.slow
def test_make_run_prints_each_log_line_once(start_run):
    run = start_run(DEBUG="true")
    run.wait_listening()
    assert get(f"http://127.0.0.1:{run.port}/no-such-page/") == 404
    assert run.stop() == 0
    log = run.log()
    assert log.count("Starting ASGI/Daphne") == 1, log
    assert log.count("Not Found: /no-such-page/") == 1, log


@pytest.mark.slow
def test_stopping_make_run_stops_every_process_it_started(start_run):
    run = start_run()
    run.wait_listening()
    scheduler, server = run.child("qcluster"), run.child("runserver")
    run.process.send_signal(signal.SIGTERM)  # as a supervisor or `timeout` stops it
    assert run.process.wait(30) == 0
    deadline = time.monotonic() + 15
    while any(map(alive, (scheduler, server))) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in (scheduler, server) if alive(pid)], run.log()


@pytest.mark.slow
def test_the_scheduler_stops_when_the_server_exits(start_run):
    run = start_run()
    run.wait_listening()
    scheduler, server = run.child("qcluster"), run.child("runserver")
    os.kill(server, signal.SIGTERM)
    assert run.process.wait(30) == 0
    deadline = time.monotonic() + 15
    while alive(scheduler) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(scheduler), run.log()


@pytest.mark.slow
@pytest.mark.parametrize("stop_with", [signal.SIGINT, signal.SIGTERM])
async def test_stopping_make_run_during_an_answer_ends_it_with_what_was_shown(start_run, stop_with):
    """Ctrl-C (or a supervisor's SIGTERM) mid-answer: within 5 s the answer is persisted
    up to the last token its driver was shown and ends in error, saying why."""
    import asyncio

    from asgiref.sync import sync_to_async
    from django.contrib.auth import get_user_model

    from chatproject.chat.models import Conversation, Message
    from streaming.driver import SERVER_STOPPED
    from tests.servers import WsClient, session_cookie

    run = start_run(LLM_DEMO_TOKENS_PER_SECOND="20")
    await asyncio.to_thread(run.wait_listening)
    user = await sync_to_async(get_user_model().objects.create_user)("ann", password="pw")
    conversation = await Conversation.objects.acreate(owner=user)
    cookie = await sync_to_async(session_cookie)(user)

    class Server:  # what WsClient needs of a server
        port = run.port
        ws_url = f"ws://127.0.0.1:{run.port}"
        http_url = f"http://127.0.0.1:{run.port}"

    driver = await WsClient(Server, f"/ws/conversations/{conversation.pk}/", cookie).connect()
    stream_id = await driver.prompt("Tell me about the demo.")
    await driver.until(lambda f: f["type"] == "token" and f.get("part") == "text")
    run.process.send_signal(stop_with)
    async with asyncio.timeout(5):  # the answer is ended within 5 s of the signal
        while (message := await Message.objects.aget(stream_id=stream_id)).status == "streaming":
            await asyncio.sleep(0.05)
    assert (message.status, message.error) == ("error", SERVER_STOPPED)
    assert await asyncio.to_thread(run.process.wait, 30) == 0
    shown = "".join(
        f["text"] for f in driver.frames if f["type"] == "token" and f["part"] == "text"
    )
    assert message.text.startswith(shown) and message.text
