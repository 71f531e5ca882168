"""The component's HTTP API, for clients without a websocket: a stream's text after a
seq, the stream as Server-Sent Events, and cancel. Async views: an event stream holds
no thread while it waits.

Errors are ``{"error": {"code", "detail"}}`` with the websocket's codes: 403 anonymous,
404 unknown or foreign, 400 bad input, 503 a service briefly away.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable, Coroutine
from functools import wraps
from typing import Any

from django.contrib.auth import get_user
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    JsonResponse,
    StreamingHttpResponse,
)
from django.views.decorators.http import require_GET, require_POST

from streaming.adapter import get_adapter
from streaming.asyncdb import run_in_db
from streaming.core.body import StreamBody
from streaming.driver import cancel_stream
from streaming.errors import StreamError
from streaming.events import follow_frames
from streaming.frames import Frame, encode_frame
from streaming.hub import get_hub
from streaming.models import Stream
from streaming.outages import TRANSIENT_ERRORS
from streaming.selectors import body_of, stream_get
from streaming.services import stream_settle_if_expired

logger = logging.getLogger(__name__)

AsyncView = Callable[..., Coroutine[Any, Any, HttpResponseBase]]

#: HTTP status of each error code; any other code is bad input (400).
ERROR_STATUS = {
    "authentication_required": 403,
    "csrf_failed": 403,
    StreamError.NOT_FOUND: 404,
    "unknown_conversation": 404,
    "frame_too_large": 413,
    StreamError.TOO_MANY_ACTIVE: 429,
    StreamError.UNAVAILABLE: 503,
}
_SEQ = re.compile(r"-1|[0-9]{1,15}")
UNAVAILABLE = "The server is briefly unavailable; try again in a moment."
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: Sent first on every event stream: how soon a browser's EventSource reconnects (ms).
SSE_RETRY = b"retry: 1000\n\n"


def json_error(code: str, detail: str) -> JsonResponse:
    return JsonResponse(
        {"error": {"code": code, "detail": detail}}, status=ERROR_STATUS.get(code, 400)
    )


def outage_response(
    request: HttpRequest, exc: BaseException, response: HttpResponse | None = None
) -> HttpResponse:
    """A 503 for a service briefly away (``response``, else the JSON error), with
    ``Retry-After``, logged once at WARNING: an outage is not a bug, and Django's request
    logger, which logs every 5xx again at ERROR, is told that it has been logged."""
    logger.warning("%s: a service is away: %r", request.path, exc)
    if response is None:
        response = json_error(StreamError.UNAVAILABLE, UNAVAILABLE)
    response["Retry-After"] = "5"
    response._has_been_logged = True  # type: ignore[attr-defined]  # log_response
    return response


def json_api(view: AsyncView) -> AsyncView:
    """For an async JSON view: anonymous → 403, ``StreamError`` → its code's status,
    the database or the channel layer briefly away → 503, all as JSON errors."""

    @wraps(view)
    async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            # Off the request's own thread, as every database call of these views: a
            # connection taken there would be held until the response ends (an event
            # stream: for minutes), while the view's own calls need others, and a few
            # requests at once would hold the whole pool waiting for more.
            user = await run_in_db(get_user, request)
            if not user.is_authenticated:
                return json_error("authentication_required", "Log in first.")
            request.user = user  # resolved: the lazy one would query synchronously
            return await view(request, *args, **kwargs)
        except StreamError as exc:
            return json_error(exc.code, exc.detail)
        except TRANSIENT_ERRORS as exc:
            return outage_response(request, exc)

    return wrapper


def parse_after(value: str | None, name: str = "after") -> int | None:
    """A seq cursor from a query parameter or header: an integer >= -1, or None."""
    if value is None or value == "":
        return None
    if not _SEQ.fullmatch(value.strip()):
        raise StreamError("invalid_frame", f"{name} must be an integer >= -1.")
    return int(value)


async def accessible_stream(user: Any, stream_id: str) -> Stream:
    """The stream if ``user`` may read it (an expired lease settled first); foreign and
    unknown ones are both unknown_stream."""
    stream = await run_in_db(stream_get, stream_id=stream_id)
    if not get_adapter().can_access(user, stream):
        raise StreamError(StreamError.NOT_FOUND, "No such stream.")
    if stream.lease_expired:
        settled = await run_in_db(stream_settle_if_expired, stream_id=stream.id)
        stream = settled or stream
    return stream


def body_payload(stream_id: str, body: StreamBody) -> dict[str, Any]:
    return {
        "stream_id": stream_id,
        "status": body.status,
        "text": body.text,
        "reasoning": body.reasoning,
        "last_seq": body.last_seq,
        "error": body.error,
        "snapshot": body.snapshot,
        "finish_reason": body.finish_reason,
        "model": body.model,
        "usage": body.usage,
    }


def sse_event(frame: Frame | None) -> bytes:
    """One frame as a Server-Sent Event (``event:`` its type, ``data:`` its JSON, ``id:``
    its seq for a chunk and its last seq for a snapshot); None is a keep-alive comment."""
    if frame is None:
        return b": keep-alive\n\n"
    kind = frame["type"]
    event_id = (
        frame["seq"] if kind == "chunk" else frame["last_seq"] if kind == "snapshot" else None
    )
    head = "" if event_id is None else f"id: {event_id}\n"
    return f"{head}event: {kind}\ndata: {encode_frame(frame)}\n\n".encode()


def sse_response(frames: AsyncIterator[Frame | None]) -> StreamingHttpResponse:
    """An event stream of ``frames``; it ends quietly if a service goes away mid-way
    (the client reconnects with Last-Event-ID)."""

    async def events() -> AsyncIterator[bytes]:
        yield SSE_RETRY
        try:
            async for frame in frames:
                yield sse_event(frame)
        except TRANSIENT_ERRORS as exc:
            logger.warning("an event stream ended early, a service is away: %r", exc)

    return StreamingHttpResponse(events(), content_type="text/event-stream", headers=SSE_HEADERS)


@require_GET
@json_api
async def stream_detail(request: HttpRequest, stream_id: str) -> HttpResponseBase:
    after = parse_after(request.GET.get("after"))
    stream = await accessible_stream(request.user, stream_id)
    body = await run_in_db(body_of, stream.id, after=after)
    return JsonResponse(body_payload(str(stream.id), body))


@require_GET
@json_api
async def stream_events(request: HttpRequest, stream_id: str) -> HttpResponseBase:
    """The stream as Server-Sent Events, after ``Last-Event-ID``, else ``?after=``."""
    after = parse_after(request.headers.get("Last-Event-ID"), "Last-Event-ID")
    if after is None:
        after = parse_after(request.GET.get("after"))
    stream = await accessible_stream(request.user, stream_id)
    await get_hub()  # a channel layer that is away answers 503 here, not mid-stream
    frames = follow_frames(str(stream.id), stream.group, after=-1 if after is None else after)
    return sse_response(frames)


@require_POST
@json_api
async def stream_cancel(request: HttpRequest, stream_id: str) -> HttpResponseBase:
    """What a websocket's ``cancel`` frame does: 202, and the stream ends cancelled
    wherever its driver runs; 200 for a stream already final, left as it is."""
    stream = await accessible_stream(request.user, stream_id)
    if not stream.is_final and await cancel_stream(stream.id):
        return JsonResponse({"stream_id": str(stream.id), "status": "cancelling"}, status=202)
    stream = await run_in_db(stream_get, stream_id=stream.id)
    return JsonResponse({"stream_id": str(stream.id), "status": stream.status})
