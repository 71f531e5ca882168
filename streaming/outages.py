"""The errors that mean "a backing service is briefly away", not "a bug"."""

from __future__ import annotations

from django.db import InterfaceError, OperationalError

#: The database is away (restarting, unreachable, a connection dropped). Not DataError
#: or IntegrityError: retrying those gives the same answer.
DB_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (OperationalError, InterfaceError)

#: A lost or refused connection to Redis (through redis-py) or any socket.
LAYER_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, OSError, TimeoutError)
try:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    LAYER_ERRORS += (RedisConnectionError, RedisTimeoutError)
except ImportError:  # pragma: no cover - only without channels-redis installed
    pass

#: What a consumer answers with an ``unavailable`` error frame instead of dying.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (*DB_OUTAGE_ERRORS, *LAYER_ERRORS)
