"""A database or channel layer that is briefly away is a 503, never a 500 traceback."""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

from streaming.outages import TRANSIENT_ERRORS
from streaming.views import json_error

logger = logging.getLogger(__name__)

UNAVAILABLE = "The server is briefly unavailable; try again in a moment."


class ServiceUnavailableMiddleware:
    """Turns an outage raised by a view (pages and APIs alike) into a 503: a JSON error
    on ``/api/``, a short page elsewhere, with ``Retry-After``."""

    sync_capable = async_capable = True  # no thread hop before the async views

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        # In async mode this returns get_response's coroutine, which the caller awaits.
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, TRANSIENT_ERRORS):
            return None
        logger.warning("%s: a service is away: %r", request.path, exception)
        if request.path.startswith("/api/"):
            response: HttpResponse = json_error("unavailable", UNAVAILABLE)
        else:
            response = HttpResponse(UNAVAILABLE, status=503, content_type="text/plain")
        response["Retry-After"] = "5"
        return response
