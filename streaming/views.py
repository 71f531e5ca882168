"""The HTTP fallback for clients without a websocket: a stream's text after a seq."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

from streaming.adapter import get_adapter
from streaming.errors import StreamError
from streaming.selectors import body_of, stream_get


def json_login_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Like ``login_required`` for a JSON API: 403 with a JSON body, no redirect."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return JsonResponse({"error": "authentication_required"}, status=403)
        return view(request, *args, **kwargs)

    return wrapper


def not_found() -> JsonResponse:
    return JsonResponse({"error": StreamError.NOT_FOUND}, status=404)


@require_GET
@json_login_required
def stream_detail(request: HttpRequest, stream_id: str) -> HttpResponse:
    after_param = request.GET.get("after")
    try:
        after = None if after_param in (None, "") else int(after_param)
    except ValueError:
        return JsonResponse(
            {"error": "invalid_after", "detail": "after must be an integer."}, status=400
        )
    try:
        stream = stream_get(stream_id=stream_id)
    except StreamError:
        return not_found()
    if not get_adapter().can_access(request.user, stream):
        return not_found()
    body = body_of(stream, after=after)
    return JsonResponse(
        {
            "stream_id": str(stream.id),
            "status": body.status,
            "text": body.text,
            "last_seq": body.last_seq,
            "error": body.error,
            "snapshot": body.snapshot,
        }
    )
