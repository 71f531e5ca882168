"""Abuse of the websocket: random frames from a property-based fuzzer, over a real socket
to a daphne process.

Every frame gets an ``error`` frame with the code its defect calls for, or the socket is
closed with the frame-rate limit's code (``streaming.FLOOD_CLOSE_CODE``, 4008 in the
contract; the fuzzer sends as fast as it can, so it meets the limit about every 60 frames,
reconnects and goes on). No
frame writes a row, and the server logs no exception.

Valid prompts are never generated: a prompt here is always refused (not a string, blank,
too long, or in a frame over the size limit). The prompts that are valid by length but
that no database can store (a lone surrogate, a NUL) have tests of their own below.
"""

from __future__ import annotations

import collections
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from django.conf import settings as django_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming.consumers import FLOOD_CLOSE_CODE
from tests.reliability.support import count_rows, create_account, log_problems
from tests.servers import FINAL_STATUSES

pytestmark = [pytest.mark.django_db(transaction=True)]

ABNORMAL_CLOSURE = 1006

TYPES = frozenset({"prompt", "resume", "cancel"})
WHITESPACE = "".join(c for c in map(chr, range(0x3001)) if c.isspace())
EDGES = [
    "\ud800",  # lone high surrogate (escaped in JSON: the socket carries UTF-8)
    "\udfff",  # lone low surrogate
    "a\udc00b",
    "\ud83d\ude00"[::-1],  # a surrogate pair in the wrong order
    "\x00",
    "a\x00b",
    "\ufeff",  # BOM
    "\u202e",  # right-to-left override
    "\u200b",  # zero width space
    "\uffff",
    "\U0010ffff",
    "e\u0301",  # combining accent
    "🎉",
    "\u2028\u2029",
    "\x7f",
    "null",
    "__proto__",
    "{}",
    "' OR 1=1 --",
    "<script>alert(1)</script>",
    "../../etc/passwd",
]


@dataclass(frozen=True)
class Probe:
    kind: str
    raw: str | bytes
    expect: frozenset[str] | None  # None: any error code


def dumps(value: Any, ascii_only: bool = True) -> str:
    """JSON text for the wire: lone surrogates can only travel escaped."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, ensure_ascii=True)
    return text


def size_of(raw: str | bytes) -> int:
    return len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8"))


def strategies(foreign_ids: list[str], frame_limit: int, prompt_limit: int):
    surrogates = st.text(st.integers(0xD800, 0xDFFF).map(chr), min_size=1, max_size=3)
    junk_text = st.one_of(
        st.text(max_size=40),
        st.sampled_from(EDGES),
        surrogates,
        st.text(st.characters(max_codepoint=0x1F), max_size=10),
    )
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(),
        junk_text,
    )
    values = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(junk_text, inner, max_size=4),
        max_leaves=12,
    )
    non_strings = values.filter(lambda v: not isinstance(v, str))

    def frame(kind: str, fields: dict[str, Any], expect: set[str], ascii_only: bool = True):
        body = {k: v for k, v in fields.items() if v is not _MISSING}
        raw = dumps(body, ascii_only)
        if size_of(raw) > frame_limit:
            expect = {"frame_too_large"}
        return Probe(kind, raw, frozenset(expect))

    # --- not JSON, not an object, no string type, unknown type ----------------------
    bad_json = st.one_of(
        st.text(max_size=200),
        st.builds(
            lambda v, cut: dumps(v)[: max(0, len(dumps(v)) - cut)], values, st.integers(1, 5)
        ),
    ).filter(lambda s: not _parses(s))
    bad_json = bad_json.map(lambda s: Probe("invalid JSON", s, frozenset({"invalid_json"})))
    not_object = values.filter(lambda v: not isinstance(v, dict)).map(
        lambda v: Probe("JSON but not an object", dumps(v), frozenset({"invalid_frame"}))
    )
    no_string_type = st.builds(
        lambda extra, type_: frame("no string type", {**extra, "type": type_}, {"invalid_frame"}),
        st.dictionaries(junk_text, values, max_size=3),
        non_strings | st.just(_MISSING),
    )
    unknown_type = st.builds(
        lambda type_, extra, ascii_only: frame(
            "unknown type", {**extra, "type": type_}, {"unknown_type"}, ascii_only
        ),
        junk_text.filter(lambda t: t not in TYPES),
        st.dictionaries(junk_text.filter(lambda k: k != "type"), values, max_size=3),
        st.booleans(),
    )

    # --- resume and cancel with ids that are not the socket's ------------------------
    def id_variants(value: str) -> st.SearchStrategy[str]:
        u = uuid.UUID(value)
        return st.sampled_from(
            [value, value.upper(), u.hex, f"{{{value}}}", f"urn:uuid:{value}", f" {value} "]
        )

    foreign = st.sampled_from(foreign_ids).flatmap(id_variants)
    ids = st.one_of(st.uuids().map(str), foreign, junk_text, non_strings, st.just(_MISSING))
    afters = st.one_of(st.integers(min_value=-1, max_value=2**70), st.just(_MISSING), values)

    def resume(stream_id: Any, after: Any) -> Probe:
        valid_after = after is _MISSING or (
            isinstance(after, int) and not isinstance(after, bool) and after >= -1
        )
        if not valid_after or not isinstance(stream_id, str):
            return frame(
                "resume, bad fields",
                {"type": "resume", "stream_id": stream_id, "after": after},
                {"invalid_frame"},
            )
        kind = "resume, other user's stream" if _is_foreign(stream_id, foreign_ids) else "resume"
        return frame(
            kind, {"type": "resume", "stream_id": stream_id, "after": after}, {"unknown_stream"}
        )

    def cancel(stream_id: Any) -> Probe:
        if not isinstance(stream_id, str):
            return frame(
                "cancel, bad id", {"type": "cancel", "stream_id": stream_id}, {"invalid_frame"}
            )
        kind = "cancel, other user's stream" if _is_foreign(stream_id, foreign_ids) else "cancel"
        return frame(kind, {"type": "cancel", "stream_id": stream_id}, {"unknown_stream"})

    # --- prompts that must be refused --------------------------------------------------
    long_text = st.builds(
        lambda char, extra: char * (prompt_limit + extra),
        st.sampled_from(["a", "é", "🎉", "\ud800", " "]),
        st.integers(1, 2 * prompt_limit),
    )

    def prompt(text: Any, ascii_only: bool) -> Probe:
        if not isinstance(text, str):
            expect, kind = {"invalid_frame"}, "prompt, text not a string"
        elif not text.strip():
            expect, kind = {"prompt_empty"}, "prompt, blank"
        else:
            expect, kind = {"prompt_too_long"}, "prompt, too long"
        return frame(kind, {"type": "prompt", "text": text}, expect, ascii_only)

    prompts = st.builds(
        prompt,
        st.one_of(
            non_strings,
            st.just(_MISSING),
            st.text(st.sampled_from(WHITESPACE), max_size=50),
            long_text,
        ),
        st.booleans(),
    )

    # --- sizes around the frame limit -----------------------------------------------------
    def padded(type_: str, size: int, char: str) -> Probe:
        head = dumps({"type": type_, "pad": ""})
        room = max(0, size - size_of(head))
        fill = char * max(0, room // size_of(dumps(char)[1:-1]))
        raw = dumps({"type": type_, "pad": fill}, ascii_only=False)
        expect = {"frame_too_large"} if size_of(raw) > frame_limit else {"unknown_type"}
        return Probe("near the frame size limit", raw, frozenset(expect))

    near_limit = st.builds(
        padded,
        st.sampled_from(["zzz", "\u202e", "🎉"]),
        st.integers(frame_limit - 300, frame_limit + 300),
        st.sampled_from(["a", "é", "🎉", "\\"]),
    )

    # --- nesting, binary frames ---------------------------------------------------------
    def nested(depth: int, opener: str, inside: bool) -> Probe:
        closer = {"[": "]", '{"a":': "}"}[opener]
        core = opener * depth + ("1" if opener != "[" else "") + closer * depth
        raw = f'{{"type":"resume","stream_id":{core}}}' if inside else core
        return Probe("nested junk", raw, frozenset({"invalid_json", "invalid_frame"}))

    nesting = st.builds(
        nested,
        st.one_of(st.integers(1, 50), st.integers(50, 20_000)),
        st.sampled_from(["[", '{"a":']),
        st.booleans(),
    )
    binary = st.binary(max_size=300).map(lambda b: Probe("binary frame", b, None))

    return st.one_of(
        bad_json,
        not_object,
        no_string_type,
        unknown_type,
        st.builds(resume, ids, afters),
        st.builds(cancel, ids),
        prompts,
        near_limit,
        nesting,
        binary,
    )


_MISSING = object()


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def _is_foreign(value: str, foreign_ids: list[str]) -> bool:
    try:
        return str(uuid.UUID(value.strip())) in foreign_ids
    except ValueError:
        return False


class Socket:
    """A synchronous websocket that reconnects after a close, counting why it closed."""

    def __init__(self, url: str, origin: str, cookie: str) -> None:
        self.url, self.origin, self.cookie = url, origin, cookie
        self.connection: Any = None
        self.closes: collections.Counter[int | None] = collections.Counter()

    def ensure(self) -> None:
        from websockets.sync.client import connect

        if self.connection is None:
            self.connection = connect(
                self.url,
                origin=self.origin,
                additional_headers={"Cookie": self.cookie},
                proxy=None,
                open_timeout=10,
                max_size=None,
                legacy=True,  # kept open across examples, not a with block
            )

    def exchange(self, raw: str | bytes) -> tuple[dict[str, Any] | None, int | None]:
        """Send one frame; return (the reply, None) or (None, the close code)."""
        from websockets.exceptions import ConnectionClosed

        self.ensure()
        try:
            self.connection.send(raw)
            return json.loads(self.connection.recv(timeout=10)), None
        except ConnectionClosed as closed:
            # No close frame at all (1006): the server closed for the rate limit while a
            # large frame was still arriving, and the TCP connection was reset under it.
            code = closed.rcvd.code if closed.rcvd else ABNORMAL_CLOSURE
            self.closes[code] += 1
            self.connection = None
            return None, code

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def _victim_stream(server, account) -> str:
    """An answered prompt of another user: its stream id is what the fuzzer may not reach."""
    socket = Socket(server.ws_url + account.path, server.http_url, account.cookie)
    reply, _ = socket.exchange(json.dumps({"type": "prompt", "text": "Mine alone."}))
    stream_id = None
    while True:
        frame = reply or json.loads(socket.connection.recv(timeout=10))
        reply = None
        if frame["type"] == "message" and frame["driving"]:
            stream_id = frame["message"]["stream_id"]
        if frame["type"] == "status" and frame["status"] in FINAL_STATUSES:
            socket.close()
            return stream_id


@pytest.mark.timeout(300)
def test_a_thousand_random_frames_each_get_an_error_frame_and_write_nothing(start_daphne, report):
    server = start_daphne()  # one process, in-memory layer, the demo LLM
    victim, fuzzer = create_account("victim"), create_account("fuzzer")
    foreign_ids = [_victim_stream(server, victim)]
    before = count_rows()
    frame_limit = django_settings.CHAT_FRAME_MAX_BYTES
    socket = Socket(server.ws_url + fuzzer.path, server.http_url, fuzzer.cookie)
    kinds: collections.Counter[str] = collections.Counter()
    codes: collections.Counter[str] = collections.Counter()
    wrong: list[tuple[Probe, Any]] = []
    started = time.monotonic()

    @settings(
        max_examples=1000,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(probe=strategies(foreign_ids, frame_limit, django_settings.CHAT_PROMPT_MAX_CHARS))
    def every_frame_is_refused(probe: Probe) -> None:
        kinds[probe.kind] += 1
        reply, closed = socket.exchange(probe.raw)
        if closed is not None:
            codes[f"closed {closed}"] += 1
            assert closed in (FLOOD_CLOSE_CODE, ABNORMAL_CLOSURE), (
                probe.kind,
                size_of(probe.raw),
                f"closed {closed}",
            )
            return
        codes[reply.get("code", reply["type"])] += 1
        ok = reply["type"] == "error" and (probe.expect is None or reply["code"] in probe.expect)
        if not ok:
            wrong.append((probe, reply))
        assert ok, (probe.kind, repr(probe.raw)[:300], probe.expect, reply)

    try:
        every_frame_is_refused()
    finally:
        socket.close()
        took = time.monotonic() - started
        report("tried", f"{sum(kinds.values())} frames in {took:.1f} s: {dict(kinds)}")
        report("measured", f"answers: {dict(codes)}; socket closes: {dict(socket.closes)}")

    after = count_rows()
    problems = log_problems(server)
    assert sum(kinds.values()) >= 1000
    assert after == before, (before, after)
    assert problems == [], problems[:20]
    report(
        "held",
        "every frame got an error frame with the expected code, or a 4008 close (rate "
        f"limit) after which the fuzzer reconnected; rows unchanged {after}; no server "
        "exception logged",
    )


# --- what the fuzzer found, pinned down -----------------------------------------------------


def _one_socket(start_daphne):
    server = start_daphne()
    fuzzer = create_account("fuzzer")
    socket = Socket(server.ws_url + fuzzer.path, server.http_url, fuzzer.cookie)
    return server, socket


@pytest.mark.timeout(60)
def test_json_nested_deeper_than_the_parser_allows_gets_an_error_frame_not_a_crash(
    start_daphne, report
):
    server, socket = _one_socket(start_daphne)
    before = count_rows()
    answers = []
    for raw in [
        "[" * 5000 + "]" * 5000,
        '{"type":"resume","stream_id":' + "[" * 5000 + "]" * 5000 + "}",
        '{"a":' * 5000 + "1" + "}" * 5000,
    ]:
        reply, closed = socket.exchange(raw)
        answers.append(f"closed {closed}" if closed else reply.get("code"))
    reply, closed = socket.exchange('{"type":"hello"}')  # the socket still answers
    socket.close()
    report("tried", "JSON nested 5000 deep: a list, a list as stream_id, objects")
    report("measured", f"answers: {answers}, then {reply and reply.get('code')}")
    assert all(answer in {"invalid_json", "invalid_frame"} for answer in answers), answers
    assert reply is not None and reply["code"] == "unknown_type"
    assert count_rows() == before
    assert log_problems(server) == [], log_problems(server)[:10]
    report("held", "each got an error frame; the socket stayed open; nothing logged")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "text", ["\ud800 lonely", "before\x00after"], ids=["lone surrogate", "NUL character"]
)
def test_a_prompt_no_database_can_store_is_refused_cleanly_or_stored_whole(
    start_daphne, report, text
):
    """A lone surrogate cannot be encoded in UTF-8 at all; PostgreSQL refuses NUL in
    text. The server must answer with an error frame that says so (not ``unavailable``,
    which tells the client to retry the same thing), or store the prompt (NUL on SQLite)."""
    server, socket = _one_socket(start_daphne)
    before = count_rows()
    reply, closed = socket.exchange(json.dumps({"type": "prompt", "text": text}))
    if reply is not None and reply["type"] == "message":
        while reply["type"] != "status" or reply["status"] not in FINAL_STATUSES:
            reply = json.loads(socket.connection.recv(timeout=10))
        outcome = f"stored, answer {reply['status']}"
    else:
        outcome = f"closed {closed}" if closed else f"{reply['type']} {reply.get('code')}"
    socket.close()
    report("tried", f"a prompt of {text!r} (escaped in JSON)")
    report("measured", f"outcome: {outcome}; rows before {before}, after {count_rows()}")
    assert closed is None, f"the socket was closed with {closed}"
    if outcome.startswith("stored"):
        assert count_rows()["messages"] == before["messages"] + 2
    else:
        assert reply["type"] == "error" and reply["code"] != "unavailable", reply
        assert count_rows() == before
    assert log_problems(server) == [], log_problems(server)[:10]
    report("held", "refused with a specific error frame or stored whole; nothing logged")
