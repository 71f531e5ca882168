"""`make run`: migrate, ensure the demo login, then serve web + websockets (daphne)
and the scheduler (qcluster) until Ctrl-C."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def manage(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "manage.py"), *args]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cannot_listen(host: str, port: str) -> str | None:
    """Why the server could not listen on host:port, or None if it can.

    Checked before anything starts: daphne only logs a failed listen and keeps running,
    which left a scheduler and a server serving nothing. SO_REUSEADDR as daphne (Twisted)
    sets it, so a port still in TIME_WAIT after the last run counts as free.
    """
    if not port.isdigit() or not 0 < int(port) < 65536:
        return f"PORT={port!r} is not a port number; run PORT=8000 make run"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, int(port), 0, socket.SOCK_STREAM
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return (
                f"Port {port} on {host} is already in use; stop what uses it or run "
                f"PORT={int(port) + 1} make run"
            )
        return f"Cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def stop(process: subprocess.Popen[bytes], *, group: bool = False) -> None:
    """SIGINT (Ctrl-C) to a process, or to its whole group, then SIGKILL after 15 s.

    SIGINT, not SIGTERM: SIGTERM to qcluster's group can deadlock it (django-q2#346),
    and runserver's autoreloader answers SIGTERM by killing the server at once.
    """
    send = os.killpg if group else os.kill
    with contextlib.suppress(ProcessLookupError):  # already gone, group and all
        send(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            send(process.pid, signal.SIGKILL)
            process.wait()


def main() -> int:
    host, port = os.environ.get("HOST", "127.0.0.1"), os.environ.get("PORT", "8000")
    if problem := cannot_listen(host, port):
        print(problem, file=sys.stderr)
        return 1
    # A SIGTERM (a supervisor, `timeout`) or a closed terminal stops both processes as
    # Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    subprocess.run(manage("migrate", "--no-input", "-v", "0"), check=True, cwd=ROOT)
    subprocess.run(manage("ensure_demo_user"), check=True, cwd=ROOT)
    scheduler = subprocess.Popen(manage("qcluster"), cwd=ROOT)
    # Without the autoreloader: under it daphne serves from a thread with no signal
    # handlers, so Ctrl-C killed the server mid-answer, and answers were left streaming
    # for the reaper. Stopped by a signal, daphne ends its answers first ("The server
    # restarted while answering."). In a group of its own, it is stopped whoever
    # signalled this script.
    server = subprocess.Popen(
        manage("runserver", "--noreload", f"{host}:{port}"), cwd=ROOT, start_new_session=True
    )
    print(f"\n  Open http://{host}:{port}/\n", flush=True)
    try:
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        # Whether runserver ended by itself or by Ctrl-C, the scheduler goes with it.
        stop(server, group=True)
        stop(scheduler)


if __name__ == "__main__":
    sys.exit(main())
