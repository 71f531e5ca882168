"""A database or channel layer that is briefly away is a 503, never a 500 traceback."""

from __future__ import annotations

from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

from streaming.outages import TRANSIENT_ERRORS
from streaming.views import UNAVAILABLE, outage_response


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
        if request.path.startswith("/api/"):
            return outage_response(request, exception)
        page = HttpResponse(UNAVAILABLE, status=503, content_type="text/plain")
        return outage_response(request, exception, page)
