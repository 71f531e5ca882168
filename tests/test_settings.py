"""The project's settings come from the environment, with safe defaults."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

from tests.servers import ROOT


def run_check(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DEBUG"}}
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_non_debug_start_without_secret_key_refuses_with_a_clear_message():
    result = run_check(DEBUG="false")
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_a_non_debug_start_with_a_secret_key_runs():
    result = run_check(DEBUG="false", SECRET_KEY="x" * 50)
    assert result.returncode == 0, result.stderr


def test_the_defaults_need_no_environment():
    assert run_check().returncode == 0


def django_q_log_level(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "Q_LOG_LEVEL"}
    script = (
        "import logging, django; django.setup(); "
        "print(logging.getLevelName(logging.getLogger('django-q').getEffectiveLevel()))"
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "chatproject.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()


def test_the_scheduler_logs_warnings_only_by_default():
    assert django_q_log_level() == "WARNING"


def test_q_log_level_brings_back_the_schedulers_info_lines():
    assert django_q_log_level(Q_LOG_LEVEL="info") == "INFO"


def test_a_server_process_collects_its_garbage_rarely_and_never_walks_the_startup_objects() -> None:
    import chatproject.asgi  # noqa: F401 - the server's entry point tunes the collector

    assert gc.get_threshold() == (20_000, 50, 50)
    assert gc.get_freeze_count() > 0
