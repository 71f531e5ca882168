"""The summary's websocket: every tab of a summary follows it live; the first socket
that opens on a summary nobody drives yet claims it and drives it.

Why a socket, not the POST: a stream created ``claimed`` must be driven by the process
that created it, and the form's POST may run in another process than the socket (or
in a WSGI worker that cannot hold a generation). So the POST creates the stream
unclaimed, and ``stream_claim`` (one winner, ever, across processes) picks the driver.
"""

from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

import streaming
from streaming.asyncdb import run_in_db
from summaries.models import Summary
from summaries.summarizer import summarize


def owned_summary(*, user: Any, summary_id: int) -> Summary | None:
    return Summary.objects.select_related("stream").filter(pk=summary_id, owner=user).first()


class SummaryConsumer(streaming.StreamConsumerMixin, AsyncJsonWebsocketConsumer):
    """``ws/summaries/<id>/``: the owner's sockets; frames in: ``resume``, ``cancel``
    (the mixin's ``receive`` serves them, and refuses any other)."""

    async def connect(self) -> None:
        user = self.scope["user"]
        summary_id = self.scope["url_route"]["kwargs"]["summary_id"]
        summary = None
        if user.is_authenticated:
            summary = await run_in_db(owned_summary, user=user, summary_id=summary_id)
        if summary is None or summary.stream is None:
            await self.close()  # anonymous, not theirs, or purged (the page has it all)
            return
        stream_id = str(summary.stream_id)
        await self.stream_join(summary.group)
        await self.accept()
        pending = summary.stream.status == streaming.Status.PENDING
        if not (pending and await self.stream_claim(stream_id)):
            # A follower: its client resumes from what its page shows.
            await self.send_json({"type": "summary", "stream_id": stream_id, "driving": False})
            return
        try:  # the client learns that it drives before its first token
            await self.send_json({"type": "summary", "stream_id": stream_id, "driving": True})
        finally:  # the claim is this process's: drive it whatever became of the socket
            deltas = summarize(summary.text, pause=settings.SUMMARY_WORD_PAUSE)
            self.stream_drive(stream_id, deltas)
