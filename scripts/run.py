"""`make run`: migrate, ensure the demo login, then serve web + websockets (daphne)
and the scheduler (qcluster) until Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def manage(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "manage.py"), *args]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # A SIGTERM (a supervisor, `timeout`) stops both processes as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    host, port = os.environ.get("HOST", "127.0.0.1"), os.environ.get("PORT", "8000")
    subprocess.run(manage("migrate", "--no-input", "-v", "0"), check=True, cwd=ROOT)
    subprocess.run(manage("ensure_demo_user"), check=True, cwd=ROOT)
    scheduler = subprocess.Popen(manage("qcluster"), cwd=ROOT)
    print(f"\n  Open http://{host}:{port}/ and log in as demo / demo\n", flush=True)
    try:
        return subprocess.call(manage("runserver", f"{host}:{port}"), cwd=ROOT)
    except KeyboardInterrupt:
        return 0
    finally:
        # SIGINT, not SIGTERM to the group: the latter can deadlock qcluster (django-q2#346).
        scheduler.send_signal(signal.SIGINT)
        try:
            scheduler.wait(timeout=15)
        except subprocess.TimeoutExpired:
            scheduler.kill()


if __name__ == "__main__":
    sys.exit(main())
