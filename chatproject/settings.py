"""Settings for the chat project.

Every knob is read from the environment with a working default, so a first run needs
nothing: SQLite, the in-memory channel layer and the offline ``demo`` LLM. Production sets
``DATABASE_URL`` (PostgreSQL), ``REDIS_URL`` and ``SECRET_KEY``. The README's settings
table lists them all.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


DEBUG = env_bool("DEBUG", True)

SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. A non-debug start needs a secret key: "
            "export SECRET_KEY=<a long random string> (or DEBUG=true for development)."
        )
    SECRET_KEY = "django-insecure-dev-only-key-never-use-in-production"

ALLOWED_HOSTS = [
    host.strip()
    for host in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")
    if host.strip()
]
CSRF_TRUSTED_ORIGINS = [
    origin.strip() for origin in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if origin
]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "django_q",
    "streaming",
    "chatproject.chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "chatproject.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = None
ASGI_APPLICATION = "chatproject.asgi.application"

# --- Database -------------------------------------------------------------------------
# Django's ASGI advice: no persistent connections (CONN_MAX_AGE = 0); PostgreSQL gets
# psycopg's pool instead.
DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}", conn_max_age=0
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = env_bool("DATABASE_POOL", True)
elif DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers run beside the single writer; the timeout waits out short locks
    # instead of failing with "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channels ---------------------------------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    # The core layer, not pub/sub: its capacity bounds what Redis holds for a slow
    # reader, and the seq numbers plus the mixin's gap repair recover what it drops.
    # Every socket of one process shares one inbox in Redis, so capacity is per process,
    # not per socket: 10,000 leaves room for hundreds of busy sockets (1,000 dropped
    # final status frames under a 100-stream benchmark). The component's subclass rides
    # out Redis restarts. socket_timeout outlives channels-redis's 5 s blocking receive.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "streaming.layers.RedisChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        "socket_timeout": 30,
                        # redis-py's async pool refuses past 100 connections, and a few
                        # hundred sockets closing at once each leave a group.
                        "max_connections": env_int("CHANNEL_LAYER_MAX_CONNECTIONS", 1000),
                    }
                ],
                "capacity": env_int("CHANNEL_LAYER_CAPACITY", 10000),
                "expiry": 60,
                "group_expiry": env_int("CHANNEL_LAYER_GROUP_EXPIRY", 86400),
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Scheduled jobs (django-q2) -----------------------------------------------------------
Q_CLUSTER = {
    "name": "chatproject",
    "workers": env_int("Q_WORKERS", 1),
    "timeout": 300,
    "retry": 360,  # must exceed timeout, or a long task runs twice
    "catch_up": False,  # reaper and purge: one run after downtime is enough
    "max_attempts": 1,
    "save_limit": 100,
    "poll": 1,
    "label": "Scheduled jobs",
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

# --- Auth, i18n, static ----------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
# Serve straight from the app and project static folders: no collectstatic step needed.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

LOGGING = {
    "version": 1,
    # Keep daphne's and Django's own loggers: without this their tracebacks vanish.
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}},
}

# --- The streaming component's policy (see streaming/conf.py for each knob) -------------
STREAMING_FLUSH_MAX_CHARS = env_int("STREAMING_FLUSH_MAX_CHARS", 2048)
STREAMING_FLUSH_MAX_DELAY = env_float("STREAMING_FLUSH_MAX_DELAY", 1.0)
STREAMING_FLUSH_MIN_INTERVAL = env_float("STREAMING_FLUSH_MIN_INTERVAL", 0.1)
STREAMING_LEASE_SECONDS = env_float("STREAMING_LEASE_SECONDS", 15.0)
STREAMING_MAX_ACTIVE_PER_OWNER = env_int("STREAMING_MAX_ACTIVE_PER_OWNER", 3)
STREAMING_RESUME_SNAPSHOT_AFTER = env_int("STREAMING_RESUME_SNAPSHOT_AFTER", 64)
STREAMING_CHUNK_RETENTION = env_float("STREAMING_CHUNK_RETENTION", 3600.0)
STREAMING_STREAM_RETENTION = env_float("STREAMING_STREAM_RETENTION", 30 * 86400.0)
STREAMING_PURGE_BATCH_SIZE = env_int("STREAMING_PURGE_BATCH_SIZE", 5000)
STREAMING_REAPER_MINUTES = env_int("STREAMING_REAPER_MINUTES", 1)
STREAMING_PURGE_MINUTES = env_int("STREAMING_PURGE_MINUTES", 60)
STREAMING_CANCEL_ON_DRIVER_DISCONNECT = env_bool("STREAMING_CANCEL_ON_DRIVER_DISCONNECT", False)
STREAMING_DB_RETRY_SECONDS = env_float("STREAMING_DB_RETRY_SECONDS", 10.0)
STREAMING_ADAPTER = "chatproject.chat.adapter.ChatStreamAdapter"

# --- The chat product --------------------------------------------------------------------
CHAT_PROMPT_MAX_CHARS = env_int("CHAT_PROMPT_MAX_CHARS", 32000)
CHAT_FRAME_MAX_BYTES = env_int("CHAT_FRAME_MAX_BYTES", 256 * 1024)

# --- LLM provider --------------------------------------------------------------------------
LLM_PROVIDER = os.environ.get("LLM_PROVIDER", "demo")
LLM_BASE_URL = os.environ.get("LLM_BASE_URL", "https://api.openai.com/v1")
LLM_API_KEY = os.environ.get("LLM_API_KEY", "")
LLM_MODEL = os.environ.get("LLM_MODEL", "gpt-4o-mini")
LLM_SYSTEM_PROMPT = os.environ.get("LLM_SYSTEM_PROMPT", "You are a helpful assistant.")
LLM_CONNECT_TIMEOUT = env_float("LLM_CONNECT_TIMEOUT", 10.0)
LLM_READ_TIMEOUT = env_float("LLM_READ_TIMEOUT", 60.0)
LLM_MAX_RETRIES = env_int("LLM_MAX_RETRIES", 0)
LLM_DEMO_TOKENS_PER_SECOND = env_float("LLM_DEMO_TOKENS_PER_SECOND", 40.0)
