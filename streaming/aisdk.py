"""The Vercel AI SDK's UI message stream, made from the component's frames.

``useChat`` (AI SDK 5 and later) reads an answer as *UI message chunks*: ``start``, the
parts (``reasoning-start/delta/end``, ``text-start/delta/end``), then one terminal chunk:
``finish`` when the stream is done, ``abort`` when it was cancelled, ``error`` (with
``errorText``) when it failed or timed out. Over HTTP each chunk is one Server-Sent Event
``data: {json}``, and ``data: [DONE]`` ends the response; over AI SDK 7's
``WebSocketChatTransport`` each chunk travels in a ``chunk`` frame with a ``sequence``.
Like the rest of the component this module knows streams, not chat: the caller names the
id its client knows the answer by (``start``'s ``messageId``).

:class:`UIMessageStreamEncoder` turns one stream's frames into chunks. It follows one
source, given (``source="token"`` for a driver's response, whose catch-up may bring a chunk
before the tokens queued meanwhile) or fixed by the first token, chunk or snapshot frame:
the driver's ``token`` frames (the ``chunk`` and ``snapshot`` frames a driver also receives
repeat its tokens, so they are skipped), or the persisted frames (``snapshot`` and
``chunk``, in ``seq`` order). A
snapshot holds each part whole up to its ``last_seq``, and parts only grow, so what it
adds is what follows the text already encoded: a resume that replays from the start
turns a snapshot into one reasoning part and one text part, and no part is repeated.
Each part is opened at its first text and closed when the other part starts or at the
end; a part that starts again after the other one (rare: models think first) opens a new
part of its kind, so the parts keep the order the model wrote them in.

:class:`WebSocketChunkEncoder` numbers the chunks for one ``WebSocketChatTransport``
request. The transport expects ``sequence`` 0, 1, 2, … per request, ignores a repeated
one and fails the whole socket on a gap; a client may resume after the last sequence it
holds (``lastSequence``). So every replay of a stream must number it alike, and the rule
is: **the sequence of a UI chunk is its index in the encoding of the persisted chunks
from seq 0**::

    0                                  start
    for each persisted chunk, in seq order (an empty one adds nothing):
        if its part is not the open one:  <open part>-end (if any), <part>-start
        <part>-delta                      (its text)
    at the final status:               <open part>-end, then the terminal chunk(s)

That is a pure function of the persisted chunks (their seq, part and whether they are
empty) and of the final status, so a resume after ``lastSequence`` follows the stream
from seq 0 again and drops every chunk numbered at or below it: none missing, none twice.
Two things cannot be numbered by that rule: tokens (their boundaries are never
persisted: a socket that drives an answer still sends what was committed, one flush
later) and snapshots (they have lost the chunk boundaries the numbers count). A
WebSocket reader is therefore caught up with chunks while they are kept; only a stream
whose chunks are purged replays from a snapshot, as a whole replay without
``lastSequence``, which is all the SDK's own transport ever asks for.

The transports: :func:`ui_message_response` is an HTTP response of any frames iterator
(``drive_frames`` for the request that drives an answer, :func:`ui_message_replay` for a
``resumeStream()``), and :func:`websocket_chat_frames` the frames of one
``WebSocketChatTransport`` request. Both go on until the answer's terminal chunk: the
SDK cannot reconnect in the middle of a response, so where an event stream's bounded
time ends its frames, they follow the persisted stream on from what they encoded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, Final, Literal

from django.http import StreamingHttpResponse

from streaming.core.lifecycle import Status
from streaming.errors import StreamError
from streaming.events import follow_frames
from streaming.hub import get_hub
from streaming.outages import TRANSIENT_ERRORS

logger = logging.getLogger(__name__)

Frame = Mapping[str, Any]
Chunk = dict[str, Any]
Part = Literal["text", "reasoning"]

#: Headers of a UI message stream response (those of the SDK's own
#: ``UI_MESSAGE_STREAM_HEADERS`` that an ASGI response may set).
UI_MESSAGE_STREAM_HEADERS: Final = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "x-vercel-ai-ui-message-stream": "v1",
}
SSE_DONE: Final = b"data: [DONE]\n\n"
#: What a silence sends (the SDK's own keep-alive comment; proxies keep the connection).
SSE_KEEP_ALIVE: Final = b": keep-alive\n\n"
UNAVAILABLE_TEXT: Final = "The server is briefly unavailable; reload to see the rest of the answer."

#: ``StreamError`` codes. A gap: the frames skipped persisted chunks, so the reader must
#: catch up again. Inexact: sequences cannot be continued exactly after ``lastSequence``,
#: so the client must resume from the start.
FRAME_GAP: Final = "frame_gap"
RESUME_INEXACT: Final = "resume_inexact"

#: The SDK's finish reasons for those an LLM server reports (``FinishReason`` in ``ai``).
_FINISH_REASONS: Final = {"stop": "stop", "length": "length", "content_filter": "content-filter"}
_ERROR_TEXTS: Final = {
    Status.ERROR: "The answer failed.",
    Status.TIMEOUT: "The answer timed out.",
}
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def sse_event(chunk: Chunk) -> bytes:
    """One chunk as the Server-Sent Event the SDK's ``parseJsonEventStream`` reads."""
    return b"data: " + _JSON.encode(chunk).encode("utf-8") + b"\n\n"


class UIMessageStreamEncoder:
    """The UI message chunks of one stream, frame by frame."""

    def __init__(
        self,
        *,
        message_id: str,
        stream_id: str,
        source: Literal["token", "persisted"] | None = None,
    ) -> None:
        self.message_id = message_id
        self.stream_id = stream_id
        self.started = False
        self.finished = False
        self.last_seq = -1
        self._source = source
        self._open: tuple[Part, str] | None = None
        self._opened: dict[Part, int] = {"reasoning": 0, "text": 0}
        self._length: dict[Part, int] = {"reasoning": 0, "text": 0}  # encoded, per part
        self._persisted: dict[Part, int] = {"reasoning": 0, "text": 0}  # read, per part

    def start(self) -> list[Chunk]:
        """The ``start`` chunk, once: the first thing ``encode`` returns. Call it to send
        the message id and the stream id (a Stop button's handle) before any frame."""
        if self.started:
            return []
        self.started = True
        return [
            {
                "type": "start",
                "messageId": self.message_id,
                "messageMetadata": {"stream_id": self.stream_id},
            }
        ]

    def encode(self, frame: Frame) -> list[Chunk]:
        """The chunks one frame adds (``start`` first). Frames of other streams, of other
        types and after the final status add none, so a reader may pass every frame."""
        if self.finished or frame.get("stream_id") != self.stream_id:
            return []
        kind = frame.get("type")
        if kind not in ("token", "chunk", "snapshot", "status"):
            return []
        chunks = self.start()
        if kind == "token":
            chunks += self._token(frame)
        elif kind == "chunk":
            chunks += self._chunk(frame)
        elif kind == "snapshot":
            chunks += self._snapshot(frame)
        else:
            chunks += self._status(frame)
        return chunks

    def sse(self, frame: Frame) -> bytes:
        """``encode`` as the bytes of an SSE response, ended by ``[DONE]`` after the
        terminal chunk."""
        was_finished = self.finished
        body = b"".join(sse_event(chunk) for chunk in self.encode(frame))
        return body + SSE_DONE if self.finished and not was_finished else body

    def follow_persisted(self) -> None:
        """From now on the persisted frames carry the text, read from seq 0: for a
        driver's response whose tokens stopped before the answer did. Each part goes on
        after the text already encoded, so nothing the tokens showed is sent again (a
        stream's persisted text is what its driver was shown)."""
        if self._source != "persisted":
            self._source = "persisted"
            self.last_seq = -1

    def _follow(self, source: Literal["token", "persisted"]) -> bool:
        """Whether frames of ``source`` carry this encoder's text (see the module doc)."""
        if self._source is None:
            self._source = source
        if self._source == "persisted" and source == "token":
            raise ValueError("token frames after persisted ones: feed the encoder one source")
        return self._source == source

    def _token(self, frame: Frame) -> list[Chunk]:
        self._follow("token")
        return self._delta(frame["part"], frame["text"])

    def _chunk(self, frame: Frame) -> list[Chunk]:
        if not self._follow("persisted"):
            return []
        seq = frame["seq"]
        if seq <= self.last_seq:
            return []  # already encoded (a catch-up and the live frames may overlap)
        if seq != self.last_seq + 1:
            raise StreamError(FRAME_GAP, f"chunk {seq} follows chunk {self.last_seq}")
        self.last_seq = seq
        return self._persisted_text(frame["part"], frame["text"], at=self._persisted[frame["part"]])

    def _snapshot(self, frame: Frame) -> list[Chunk]:
        if not self._follow("persisted"):
            return []
        self.last_seq = max(self.last_seq, frame["last_seq"])
        return self._persisted_text("reasoning", frame["reasoning"], at=0) + (
            self._persisted_text("text", frame["text"], at=0)
        )

    def _persisted_text(self, part: Part, text: str, *, at: int) -> list[Chunk]:
        """``text``, persisted at offset ``at`` of its part: only what follows the text
        already encoded (all of it, unless a snapshot or tokens were ahead)."""
        self._persisted[part] = max(self._persisted[part], at + len(text))
        return self._delta(part, text[max(0, self._length[part] - at) :])

    def _status(self, frame: Frame) -> list[Chunk]:
        status = Status(frame["status"])
        if not status.is_final:
            return []
        final_seq = frame.get("last_seq")
        if self._source != "token" and final_seq is not None and final_seq > self.last_seq:
            raise StreamError(FRAME_GAP, f"final chunk {final_seq}, encoded {self.last_seq}")
        self.finished = True
        metadata = {
            "finish_reason": frame.get("finish_reason"),
            "model": frame.get("model"),
            "usage": frame.get("usage"),
        }
        chunks = self._close()
        if status == Status.DONE:
            finish: Chunk = {"type": "finish", "messageMetadata": metadata}
            if metadata["finish_reason"] is not None:
                finish["finishReason"] = _FINISH_REASONS.get(metadata["finish_reason"], "other")
            return [*chunks, finish]
        chunks.append({"type": "message-metadata", "messageMetadata": metadata})
        if status == Status.CANCELLED:
            return [*chunks, {"type": "abort"}]
        return [*chunks, {"type": "error", "errorText": frame.get("error") or _ERROR_TEXTS[status]}]

    def _delta(self, part: Part, text: str) -> list[Chunk]:
        if not text:
            return []
        chunks: list[Chunk] = []
        if self._open is None or self._open[0] != part:
            chunks += self._close()
            self._open = (part, f"{part}-{self._opened[part]}")
            self._opened[part] += 1
            chunks.append({"type": f"{part}-start", "id": self._open[1]})
        self._length[part] += len(text)
        chunks.append({"type": f"{part}-delta", "id": self._open[1], "delta": text})
        return chunks

    def _close(self) -> list[Chunk]:
        if self._open is None:
            return []
        part, part_id = self._open
        self._open = None
        return [{"type": f"{part}-end", "id": part_id}]


class WebSocketChunkEncoder:
    """The ``chunk`` frames, then ``end``, of one ``WebSocketChatTransport`` request.

    Give it the persisted frames of the stream from seq 0; with ``last_sequence`` it
    sends only the chunks after it (see the module doc for why that is exact).
    """

    def __init__(
        self,
        *,
        request_id: str,
        message_id: str,
        stream_id: str,
        last_sequence: int | None = None,
    ) -> None:
        self.request_id = request_id
        self.last_sequence = last_sequence
        self.next_sequence = 0
        self._ui = UIMessageStreamEncoder(message_id=message_id, stream_id=stream_id)
        self._caught_up = False  # a chunk or snapshot of the stream was encoded
        self._ended = False

    @property
    def last_seq(self) -> int:
        """The last persisted seq encoded (where to follow the stream on from)."""
        return self._ui.last_seq

    @property
    def ended(self) -> bool:
        """``end`` was sent."""
        return self._ended

    def start(self) -> list[Frame]:
        """The ``start`` chunk's frame (none when the client holds it already)."""
        return self._numbered(self._ui.start())

    def encode(self, frame: Frame) -> list[Frame]:
        """The frames one stream frame adds; ``end`` follows the terminal chunk."""
        kind = frame.get("type") if frame.get("stream_id") == self._ui.stream_id else None
        if kind == "token":
            raise ValueError("sequence numbers count persisted chunks: pass chunks, not tokens")
        if kind == "snapshot":
            self._check_snapshot()
        frames = self._numbered(self._ui.encode(frame))
        self._caught_up = self._caught_up or kind in ("chunk", "snapshot")
        if self._ui.finished and not self._ended:
            self._ended = True
            frames.append({"type": "end", "requestId": self.request_id})
        return frames

    def _check_snapshot(self) -> None:
        if self.last_sequence is not None and self.last_sequence >= 0:
            raise StreamError(
                RESUME_INEXACT,
                "This answer's chunks are no longer kept: resume it without lastSequence.",
            )
        if self._caught_up:
            raise StreamError(RESUME_INEXACT, "a snapshot after chunks cannot be numbered")

    def _numbered(self, chunks: Iterable[Chunk]) -> list[Frame]:
        frames: list[Frame] = []
        for chunk in chunks:
            sequence = self.next_sequence
            self.next_sequence += 1
            if self.last_sequence is None or sequence > self.last_sequence:
                frames.append(
                    {
                        "type": "chunk",
                        "requestId": self.request_id,
                        "sequence": sequence,
                        "chunk": chunk,
                    }
                )
        return frames


def ws_start(request_id: str) -> Frame:
    """Confirms a ``resume`` has an answer to replay (the transport then returns it)."""
    return {"type": "start", "requestId": request_id}


def ws_no_active(request_id: str) -> Frame:
    """Answers a ``resume`` with nothing to replay (the transport returns null)."""
    return {"type": "no-active", "requestId": request_id}


def ws_error(request_id: str, error_text: str) -> Frame:
    """Fails one request (the transport errors its stream; the socket stays open)."""
    return {"type": "error", "requestId": request_id, "errorText": error_text}


# --- transports --------------------------------------------------------------------------


def ui_message_response(
    frames: AsyncIterator[Frame | None],
    *,
    message_id: str,
    stream_id: str,
    group: str,
    driving: bool = False,
) -> StreamingHttpResponse:
    """An HTTP response of one answer as a UI message stream: ``start`` at once (its
    ``stream_id`` is a Stop button's handle), then the chunks of ``frames`` (``driving``:
    the driver's from ``drive_frames``, its tokens; else a reader's from
    ``follow_frames``; ``None`` sends a keep-alive comment), until ``[DONE]``. ``group``
    is the stream's, to follow it on if ``frames`` end before the answer."""
    encoder = UIMessageStreamEncoder(
        message_id=message_id, stream_id=stream_id, source="token" if driving else None
    )
    return StreamingHttpResponse(
        ui_message_events(encoder, frames, group=group), headers=UI_MESSAGE_STREAM_HEADERS
    )


async def ui_message_replay(
    stream_id: str, group: str, *, message_id: str
) -> StreamingHttpResponse:
    """A stream from its start, then live, as a UI message stream (``resumeStream()``)."""
    await get_hub()  # a channel layer that is away answers 503 here, not mid-stream
    frames = follow_frames(stream_id, group, after=-1)
    return ui_message_response(frames, message_id=message_id, stream_id=stream_id, group=group)


async def ui_message_events(
    encoder: UIMessageStreamEncoder, frames: AsyncIterator[Frame | None], *, group: str
) -> AsyncIterator[bytes]:
    """The body of :func:`ui_message_response`. A service that goes away mid-way ends it
    with an ``error`` chunk (the answer itself goes on; a reload resumes it)."""
    yield b"".join(sse_event(chunk) for chunk in encoder.start())
    source = frames
    try:
        while True:
            try:
                async for frame in source:
                    if frame is None:
                        yield SSE_KEEP_ALIVE
                        continue
                    body = encoder.sse(frame)
                    if body:
                        yield body
                    if encoder.finished:
                        return
            except StreamError as exc:
                if exc.code != FRAME_GAP:
                    raise
            finally:
                await _aclose(source)
            # The frames ended before the answer (their bounded time), or skipped a
            # chunk: follow the persisted stream on after what was encoded.
            encoder.follow_persisted()
            source = follow_frames(encoder.stream_id, group, after=encoder.last_seq)
    except StreamError as exc:
        yield sse_event({"type": "error", "errorText": exc.detail}) + SSE_DONE
    except TRANSIENT_ERRORS as exc:
        logger.warning("a UI message stream ended early, a service is away: %r", exc)
        yield sse_event({"type": "error", "errorText": UNAVAILABLE_TEXT}) + SSE_DONE


async def websocket_chat_frames(
    stream_id: str,
    group: str,
    *,
    request_id: str,
    message_id: str,
    last_sequence: int | None = None,
) -> AsyncIterator[Frame]:
    """The frames of one ``WebSocketChatTransport`` request: the stream's chunks from
    seq 0 (or those after ``last_sequence``), then live, numbered, then ``end``; or an
    ``error`` frame when they cannot be numbered exactly or the stream is gone."""
    encoder = WebSocketChunkEncoder(
        request_id=request_id,
        message_id=message_id,
        stream_id=stream_id,
        last_sequence=last_sequence,
    )
    for frame in encoder.start():
        yield frame
    try:
        while not encoder.ended:
            follow = follow_frames(stream_id, group, after=encoder.last_seq, snapshots=False)
            try:
                async for each in follow:
                    for frame in encoder.encode(each) if each is not None else ():
                        yield frame
                    if encoder.ended:
                        return
            except StreamError as exc:
                if exc.code != FRAME_GAP:
                    raise
            finally:
                await _aclose(follow)
    except StreamError as exc:
        yield ws_error(request_id, exc.detail)
    except TRANSIENT_ERRORS as exc:
        logger.warning("a WebSocket chat request ended early, a service is away: %r", exc)
        yield ws_error(request_id, UNAVAILABLE_TEXT)


async def _aclose(frames: AsyncIterator[Any]) -> None:
    """Close a frames generator now (its hub subscription ends), not when collected."""
    aclose = getattr(frames, "aclose", None)
    if aclose is not None:
        await aclose()
