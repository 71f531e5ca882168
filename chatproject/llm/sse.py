"""An incremental Server-Sent Events parser over the raw bytes of a response.

It follows the WHATWG event-stream rules: lines end in LF, CRLF or CR (also when a
CRLF is split across two reads); ``data:`` with or without the space; several ``data:``
lines of one event joined with LF; comment lines (``: keep-alive``) and ``id:`` and
``retry:`` ignored; an event dispatched at its blank line; an event without data
dropped; an unfinished event at the end of the stream dropped; one leading BOM ignored.

It works on bytes and splits only at line ends, which never fall inside a UTF-8
sequence, so a character split across reads needs no care and a ``data`` payload goes
to the JSON parser as bytes, never decoded twice. That is also why it is cheap: a read
holding one event costs a split and a few comparisons.
"""

from __future__ import annotations

from typing import Final, NamedTuple

_BOM: Final = b"\xef\xbb\xbf"


class ServerSentEvent(NamedTuple):
    """One dispatched event: its type (``message`` unless an ``event:`` line said) and
    its data, as bytes."""

    event: str
    data: bytes


class SSEDecoder:
    """Feed it each read of a response body; it returns the events each read completed."""

    __slots__ = ("_data", "_event", "_pending", "_skip_lf", "_started")

    def __init__(self) -> None:
        self._pending: list[bytes] = []  # the current line's bytes, not yet ended
        self._data: list[bytes] = []  # the current event's data lines
        self._event = ""  # the current event's type ("" = message)
        self._skip_lf = False  # the last read ended in CR: a leading LF ends no line
        self._started = False  # past the (optional) BOM

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Parse one read; return the events whose blank line it contained."""
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]
        if b"\r" in chunk:
            self._skip_lf = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if b"\n" not in chunk:
            if chunk:
                self._pending.append(chunk)
            return []
        if self._pending:
            self._pending.append(chunk)
            chunk = b"".join(self._pending)
            self._pending.clear()
        lines = chunk.split(b"\n")
        rest = lines.pop()
        if rest:
            self._pending.append(rest)
        if not self._started:
            self._started = True
            lines[0] = lines[0].removeprefix(_BOM)
        return self._lines(lines)

    def _lines(self, lines: list[bytes]) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    joined = data[0] if len(data) == 1 else b"\n".join(data)
                    events.append(ServerSentEvent(self._event or "message", joined))
                    data.clear()
                self._event = ""
            elif line.startswith(b"data:"):
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line[0] != 0x3A:  # not a ":" comment
                name, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if name == b"data":  # a bare "data" line: an empty data line
                    data.append(value)
                elif name == b"event":
                    self._event = value.decode("utf-8", "replace")
                # "id", "retry" and unknown fields change nothing a client here reads.
        return events
