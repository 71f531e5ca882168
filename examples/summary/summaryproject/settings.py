"""Settings of the summary example: SQLite and an in-memory channel layer by default
(one server process); with ``REDIS_URL``, channels-redis so several processes share
groups. Only the component's settings that the example needs are set."""

from __future__ import annotations

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = os.environ.get("DEBUG", "1").lower() in {"1", "true", "yes"}
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("Set SECRET_KEY to run with DEBUG off.")
    SECRET_KEY = "summary-example-only-not-secret"
ALLOWED_HOSTS = os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1").split(",")

INSTALLED_APPS = [
    "daphne",  # first: `manage.py runserver` serves ASGI (websockets) through it
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "streaming",
    "summaries",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
# No inline script anywhere: the page's state travels in json_script, its code in a module.
SECURE_CSP = {"default-src": [CSP.SELF], "img-src": [CSP.SELF, "data:"]}  # data: the icon

ROOT_URLCONF = "summaryproject.urls"
ASGI_APPLICATION = "summaryproject.asgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
            ]
        },
    }
]

# A file, so that a test and the daphne process it starts share it (SQLITE_PATH).
# IMMEDIATE and WAL: the driver's writer and the page's requests write from several
# threads (and processes) without "database is locked".
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SQLITE_PATH", str(BASE_DIR / "db.sqlite3")),
        "OPTIONS": {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL;",
        },
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
STATIC_URL = "/static/"
LOGIN_REDIRECT_URL = "/"

REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    # The component's layer rides out Redis restarts; a socket timeout above the
    # layer's 5 s blocking receive keeps idle sockets alive.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "streaming.layers.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 30}]},
        }
    }
    # The per-user frame limit counts in the cache: shared by every process.
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,  # keep daphne's tracebacks
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {"streaming": {"level": "INFO"}, "summaries": {"level": "INFO"}},
}

# The component: the hook that copies a finished summary into its row.
STREAMING_ADAPTER = "summaries.adapter.SummaryAdapter"

# The example's own: seconds between two words of the summarizer (tests go faster).
SUMMARY_WORD_PAUSE = float(os.environ.get("SUMMARY_WORD_PAUSE", "0.05"))
SUMMARY_MAX_CHARS = 20_000
