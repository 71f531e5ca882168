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
from django.utils.csp import CSP

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
    "chatproject.middleware.ServiceUnavailableMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# Every page (the admin's too) runs only the site's own script files and styles: no
# inline script or style attribute, nothing from another origin. 'self' covers the
# page's own websocket (ws: or wss: on the same host and port).
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF],
    "style-src": [CSP.SELF],
    "img-src": [CSP.SELF],
    "connect-src": [CSP.SELF],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.NONE],
    "form-action": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
}

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
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and env_bool(
    "DATABASE_POOL", True
):
    from psycopg_pool import ConnectionPool

    # Each connection is checked as it leaves the pool: after a PostgreSQL restart the
    # pool would otherwise hand out its dead connections one by one, each a failed
    # request.
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "check": ConnectionPool.check_connection,
        # A page or API request holds one connection at a time, the driver's writer and
        # the worker threads one each: psycopg_pool's default of 4 is too few at once.
        "min_size": 2,
        "max_size": env_int("DATABASE_POOL_MAX_SIZE", 20),
        # How long a request waits for a connection: psycopg_pool's 30 s would hold every
        # request of a database that is really away past any client's patience, where
        # this answers a 503 (the pool's timeout is an OperationalError).
        "timeout": env_int("DATABASE_POOL_TIMEOUT", 5),
    }
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
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": env_int("CHANNEL_LAYER_CAPACITY", 10000)},
        }
    }

# --- Cache: the streaming component counts client frames per user here, so the flood
# limit holds across sockets and processes (Redis when several share it).
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "chatproject",
        }
    }

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
    # Used by django-q2 only when logging has no handler for it (LOGGING below has one).
    "log_level": os.environ.get("Q_LOG_LEVEL", "WARNING").upper(),
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

LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    # Keep daphne's and Django's own loggers: without this their tracebacks vanish.
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"require_debug_false": {"()": "django.utils.log.RequireDebugFalse"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "level": LOG_LEVEL},
        "mail_admins": {
            "class": "django.utils.log.AdminEmailHandler",
            "level": "ERROR",
            "filters": ["require_debug_false"],
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django's default config gives "django" a console handler of its own, and its
        # records propagate to the root's too: every django.request and autoreload line
        # printed twice. Here they reach the one root handler (mail_admins is Django's
        # default, kept).
        "django": {"handlers": ["mail_admins"], "level": "INFO"},
        "django.channels.server": {"level": "WARNING"},
        # django-q2 logs every scheduled run at INFO ("Enqueued", "Processed"): with the
        # reaper each minute that fills the log. Q_LOG_LEVEL=INFO brings them back.
        "django-q": {"level": os.environ.get("Q_LOG_LEVEL", "WARNING").upper()},
    },
}

# --- The streaming component's policy ---------------------------------------------------
# Its defaults live in streaming/conf.py (docs/component.md lists them); any
# STREAMING_<NAME> environment variable overrides one, parsed there to its type.
globals().update({k: v for k, v in os.environ.items() if k.startswith("STREAMING_")})
STREAMING_ADAPTER = os.environ.get(
    "STREAMING_ADAPTER", "chatproject.chat.adapter.ChatStreamAdapter"
)

# --- The chat product --------------------------------------------------------------------
CSRF_FAILURE_VIEW = "chatproject.chat.views.csrf_failure"
CHAT_PROMPT_MAX_CHARS = env_int("CHAT_PROMPT_MAX_CHARS", 32000)
CHAT_FRAME_MAX_BYTES = env_int("CHAT_FRAME_MAX_BYTES", 256 * 1024)
# AI SDK clients send the whole conversation with every turn (docs/ai-sdk.md): their
# bodies and frames may be larger, up to daphne's own cap on a websocket message (1 MiB).
CHAT_UI_BODY_MAX_BYTES = env_int("CHAT_UI_BODY_MAX_BYTES", 1024 * 1024)

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
