"""4. Catch-up: what it costs a client to get a whole text back.

A 1 MB answer (1,000,000 characters of demo text) is stored twice: once finished (the
stream row holds the compacted text, its 5,000 chunks are still kept) and once still
streaming (5,000 chunks of 200 characters, nothing compacted). Measured in one run:

* HTTP, in process (Django's test ``Client``, ``CaptureQueriesContext`` for queries):
  the stream API for both (one row against 5,000 chunks joined), the page reload and
  the messages API of the finished answer's conversation, and the transcript page and
  messages API of a conversation with 200 messages against one with 20 (the query
  count must not grow with the length). Final answers show the HTML stored when they
  ended; as the baseline, the same pages with HTML never stored (rendered from the text
  on every load, the design before; a message of an older renderer reads the same way).
* Websocket, through daphne: ``resume`` from -1 of the streaming answer, ours (one
  ``snapshot`` frame, since it is more than STREAMING_RESUME_SNAPSHOT_AFTER = 64 chunks
  behind) against a server where that setting is out of reach (5,000 ``chunk`` frames);
  and ``resume`` of the finished answer. The time runs from sending ``resume`` to
  holding the whole text; the queries are those of the resume's reads, counted in
  process.
"""

# The report is typeset: en dashes for ranges, × for ratios, on purpose.
# ruff: noqa: RUF001, RUF003

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from bench import counters, helpers
from bench.helpers import Context, Goal, Section, Table, median, num, ratio, spread

TEXT_CHARS = 1_000_000


def small_chars() -> int:
    """A streaming answer of 5,000 chunks that one snapshot may carry: under the
    component's STREAMING_SNAPSHOT_MAX_CHARS where it has one, and under daphne's 1 MiB
    message limit in any case."""
    from streaming.conf import app_settings

    limit = getattr(app_settings, "SNAPSHOT_MAX_CHARS", None) or 1_000_000
    return min(900_000, int(limit * 0.9))


def _mb(chars: int) -> str:
    return f"{chars / 1_000_000:.2g} MB"


CHUNKS = 5_000


@dataclass
class Fixture:
    user: Any
    finished: str  # stream ids
    streaming: str
    finished_conversation: int
    streaming_conversation: int
    small: str  # a streaming answer of 5,000 chunks that fits one snapshot
    small_conversation: int
    long_conversation: int  # 200 messages
    short_conversation: int  # 20 messages
    finished_unstored_conversation: int  # the finished 1 MB text, no stored HTML
    long_unstored_conversation: int  # 200 messages, no stored HTML


def _text() -> str:
    from chatproject.llm.demo import demo_answer

    parts, size, index = [], 0, 0
    while size < TEXT_CHARS:
        part = demo_answer(f"part {index}")
        parts.append(part)
        size += len(part)
        index += 1
    return "".join(parts)[:TEXT_CHARS]


def _stream_with_chunks(user: Any, conversation: Any, text: str, *, final: bool) -> Any:
    from django.utils import timezone

    from chatproject.chat.models import Message
    from streaming.core.lifecycle import text_digest
    from streaming.models import Chunk, Stream

    now = timezone.now()
    size = len(text) // CHUNKS
    length, sha256 = text_digest(text)
    stream = Stream.objects.create(
        owner=user,
        group=conversation.group_name,
        status="done" if final else "streaming",
        lease_expires_at=now + timedelta(hours=2),
        last_seq=CHUNKS - 1,
        finished_at=now if final else None,
        text=text if final else "",
        length=length if final else None,
        sha256=sha256 if final else "",
    )
    Chunk.objects.bulk_create(
        (Chunk(stream=stream, seq=i, text=text[i * size : (i + 1) * size]) for i in range(CHUNKS)),
        batch_size=1000,
    )
    Message.objects.create(conversation=conversation, role="user", text="Write a lot.")
    Message.objects.create(
        conversation=conversation,
        role="assistant",
        stream=stream,
        text=text if final else "",
        status=stream.status,
        last_seq=CHUNKS - 1 if final else -1,
        **_stored_html(text if final else None),
    )
    return stream


def _stored_html(final_text: str | None) -> dict[str, Any]:
    """What ``message_finalize`` stores for a final answer; nothing for the rest."""
    from chatproject.chat.markdown import MARKDOWN_VERSION, render_markdown

    if final_text is None:
        return {}
    return {"html": render_markdown(final_text), "html_version": MARKDOWN_VERSION}


def _transcript(user: Any, messages: int, *, answers: list[str] | None = None) -> int:
    """A conversation of ``messages`` messages; with ``answers``, the assistant's texts
    with no stored HTML (the baseline), else demo answers stored as they end."""
    from chatproject.chat.models import Conversation, Message
    from chatproject.llm.demo import demo_answer

    conversation = Conversation.objects.create(owner=user, title=f"{messages} messages")
    rows = []
    for i in range(messages // 2):
        rows.append(Message(conversation=conversation, role="user", text=f"Question {i}?"))
        text = answers[i] if answers else demo_answer(f"q{i}")
        stored = _stored_html(None if answers else text)
        rows.append(Message(conversation=conversation, role="assistant", text=text, **stored))
    Message.objects.bulk_create(rows)
    return conversation.pk


def build() -> Fixture:
    from chatproject.chat.models import Conversation
    from chatproject.llm.demo import demo_answer

    user = helpers.make_user("catchup")
    text = _text()
    finished_c = Conversation.objects.create(owner=user, title="1 MB, finished")
    streaming_c = Conversation.objects.create(owner=user, title="1 MB, streaming")
    small_c = Conversation.objects.create(owner=user, title="small, streaming")
    finished = _stream_with_chunks(user, finished_c, text, final=True)
    streaming = _stream_with_chunks(user, streaming_c, text, final=False)
    small = _stream_with_chunks(user, small_c, text[: small_chars()], final=False)
    return Fixture(
        user,
        str(finished.id),
        str(streaming.id),
        finished_c.pk,
        streaming_c.pk,
        str(small.id),
        small_c.pk,
        _transcript(user, 200),
        _transcript(user, 20),
        _transcript(user, 2, answers=[text]),
        _transcript(user, 200, answers=[demo_answer(f"q{i}") for i in range(100)]),
    )


# --- HTTP, in process -------------------------------------------------------------------


def http(fixture: Fixture, repeats: int) -> dict[str, dict[str, list[float]]]:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(SERVER_NAME="localhost")
    client.force_login(fixture.user)
    urls = {
        "finished": f"/api/streams/{fixture.finished}/",
        "streaming": f"/api/streams/{fixture.streaming}/",
        "finished page": f"/conversations/{fixture.finished_conversation}/",
        "finished page, unstored": f"/conversations/{fixture.finished_unstored_conversation}/",
        "finished messages": f"/api/conversations/{fixture.finished_conversation}/messages/",
        "streaming page": f"/conversations/{fixture.streaming_conversation}/",
        "200 page": f"/conversations/{fixture.long_conversation}/",
        "200 page, unstored": f"/conversations/{fixture.long_unstored_conversation}/",
        "20 page": f"/conversations/{fixture.short_conversation}/",
        "200 api": f"/api/conversations/{fixture.long_conversation}/messages/",
        "20 api": f"/api/conversations/{fixture.short_conversation}/messages/",
    }
    results: dict[str, dict[str, list[float]]] = {}
    for _ in range(repeats + 1):  # the first round warms caches and is dropped
        for key, url in urls.items():
            with CaptureQueriesContext(connection) as queries:
                began = time.perf_counter()
                response = client.get(url)
                elapsed = time.perf_counter() - began
            assert response.status_code == 200, (url, response.status_code)
            row = results.setdefault(key, {"ms": [], "queries": [], "bytes": []})
            row["ms"].append(elapsed * 1000)
            row["queries"].append(len(queries))
            row["bytes"].append(len(response.content))
    for row in results.values():
        for values in row.values():
            del values[0]
    return results


# --- websocket resume, through daphne ------------------------------------------------------


async def _resume(
    server: helpers.BenchServer, path: str, cookie: str, stream_id: str, chars: int
) -> tuple[float, int, str]:
    """Time to hold ``chars`` characters after ``resume`` from -1, the frames it took,
    and how the socket failed ('' if it did not)."""
    from websockets.exceptions import ConnectionClosed

    ws = await helpers.ws_connect(server, path, cookie)
    size, frames = 0, 0
    try:
        began = time.monotonic()
        await ws.send(json.dumps({"type": "resume", "stream_id": stream_id, "after": -1}))
        while size < chars:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
            frames += 1
            if frame["type"] == "snapshot":
                size = len(frame["text"])
            elif frame["type"] == "chunk":
                size += len(frame["text"])
        return (time.monotonic() - began) * 1000, frames, ""
    except ConnectionClosed as closed:
        code = closed.rcvd.code if closed.rcvd else "?"
        return float("nan"), frames, f"socket closed by the server, code {code}"
    finally:
        await ws.close()


def _resume_queries(stream_id: str, snapshot_after: int | None) -> tuple[int, float]:
    """The queries of a resume's reads, as the follower makes them, counted in process."""
    from streaming.conf import app_settings
    from streaming.selectors import catch_up, stream_get

    with counters.StatementCounter() as counter:
        began = time.perf_counter()
        stream_get(stream_id=stream_id)
        catch_up(
            stream_id=stream_id,
            after=-1,
            snapshot_after=snapshot_after,
            snapshot_max_chars=app_settings.SNAPSHOT_MAX_CHARS,
        )
        elapsed = time.perf_counter() - began
    return counter.total, elapsed * 1000


def websocket(ctx: Context, fixture: Fixture, repeats: int) -> dict[str, dict[str, list[float]]]:
    cookie = helpers.session_cookie(fixture.user)
    ours = helpers.BenchServer(helpers.server_env(ctx))
    chunked = helpers.BenchServer(helpers.server_env(ctx, STREAMING_RESUME_SNAPSHOT_AFTER=10**9))
    big, small = TEXT_CHARS, small_chars()
    cases = {  # key: server, conversation, stream, characters, snapshot_after
        "streaming, ours": (ours, fixture.streaming_conversation, fixture.streaming, big, 64),
        "streaming, per chunk": (
            chunked, fixture.streaming_conversation, fixture.streaming, big, None
        ),
        "finished, ours": (ours, fixture.finished_conversation, fixture.finished, big, 64),
        "small, ours": (ours, fixture.small_conversation, fixture.small, small, 64),
        "small, per chunk": (chunked, fixture.small_conversation, fixture.small, small, None),
    }  # fmt: skip
    results: dict[str, dict[str, list]] = {}

    async def measure() -> None:
        for round_ in range(repeats + 1):
            for key, (server, pk, stream_id, chars, _) in cases.items():
                path = f"/ws/conversations/{pk}/"
                ms, frames, failure = await _resume(server, path, cookie, stream_id, chars)
                if round_:
                    row = results.setdefault(key, {"ms": [], "frames": [], "failure": []})
                    row["ms"].append(ms)
                    row["frames"].append(frames)
                    row["failure"].append(failure)

    with helpers.running(ours, chunked, log_dir=ctx.work_dir):
        asyncio.run(measure())
    for key, (_, _, stream_id, _, snapshot_after) in cases.items():
        queries, db_ms = _resume_queries(stream_id, snapshot_after)
        results[key]["queries"] = [queries]
        results[key]["db ms"] = [db_ms]
    return results


def run(ctx: Context) -> Section:
    section = Section("catchup", "4. Catch-up", __doc__.split("\n\n", 1)[1].strip())
    repeats = 1 if ctx.quick else 5
    helpers.log("catchup: building a 1 MB answer twice and two transcripts")
    fixture = build()
    helpers.log("catchup: HTTP")
    web = http(fixture, repeats)
    helpers.log("catchup: websocket resume")
    ws = websocket(ctx, fixture, repeats)

    reads = Table(
        "Getting the full 1 MB text back",
        ["how", "time ms", "queries", "frames / bytes", "ratio to baseline"],
    )
    finished_ms, streaming_ms = median(web["finished"]["ms"]), median(web["streaming"]["ms"])
    reads.add("GET /api/streams/<id>/, finished (one row)", spread(web["finished"]["ms"], 1),
              spread(web["finished"]["queries"]), f"{num(median(web['finished']['bytes']))} B",
              ratio(finished_ms, streaming_ms) + " of the 5,000-chunk read")  # fmt: skip
    reads.add("GET /api/streams/<id>/, streaming (5,000 chunks)",
              spread(web["streaming"]["ms"], 1), spread(web["streaming"]["queries"]),
              f"{num(median(web['streaming']['bytes']))} B", "baseline")  # fmt: skip
    labels = {
        "streaming, ours": ("resume -1 of the streaming 1 MB answer, ours",
                            "streaming, per chunk"),
        "streaming, per chunk": ("resume -1 of the streaming 1 MB answer, a frame per chunk",
                                 None),
        "finished, ours": ("resume -1 of the finished 1 MB answer, ours",
                           None),
        "small, ours": (f"resume -1 of a streaming {_mb(small_chars())} answer, ours",
                        "small, per chunk"),
        "small, per chunk": (
            f"resume -1 of a streaming {_mb(small_chars())} answer, a frame per chunk", None
        ),
    }  # fmt: skip
    for key, (label, baseline) in labels.items():
        row = ws[key]
        failures = sorted({f for f in row["failure"] if f})
        compared = "baseline" if key.endswith("per chunk") else "–"
        if baseline and not failures:
            compared = ratio(median(row["ms"]), median(ws[baseline]["ms"])) + " of per-chunk"
        reads.add(
            label,
            "fails: " + "; ".join(failures) if failures else spread(row["ms"], 1),
            spread(row["queries"]),
            f"{spread(row['frames'])} frame(s) received",
            compared,
        )
    section.tables.append(reads)
    snap, per_chunk, done = ws["small, ours"], ws["small, per chunk"], ws["finished, ours"]

    pages = Table(
        "Pages and the messages API",
        ["request", "time ms", "queries", "bytes", "ratio to baseline"],
    )
    labels = {
        "finished page": ("transcript page with the finished 1 MB answer, stored HTML",
                          "finished page, unstored"),
        "finished page, unstored": ("the same, HTML rendered on every load", None),
        "finished messages": ("messages API, finished 1 MB answer", ""),
        "streaming page": ("transcript page with the streaming 5,000-chunk answer", ""),
        "200 page": ("transcript page, 200 messages, stored HTML", "200 page, unstored"),
        "200 page, unstored": ("the same, HTML rendered on every load", None),
        "20 page": ("transcript page, 20 messages, stored HTML", ""),
        "200 api": ("messages API, 200 messages", ""),
        "20 api": ("messages API, 20 messages", ""),
    }  # fmt: skip
    for key, (label, baseline) in labels.items():
        row = web[key]
        compared = "baseline" if baseline is None else "–"
        if baseline:
            compared = ratio(median(row["ms"]), median(web[baseline]["ms"]))
        pages.add(label, spread(row["ms"], 1), spread(row["queries"]),
                  num(median(row["bytes"])), compared)  # fmt: skip
    section.tables.append(pages)

    q200, q20 = median(web["200 page"]["queries"]), median(web["20 page"]["queries"])
    section.goals += [
        Goal(
            "transcript queries, 200 vs 20 messages",
            "constant",
            f"{num(q200)} vs {num(q20)} queries",
            q200 == q20,
        ),
        Goal(
            f"resume of 5,000 chunks ({_mb(small_chars())})",
            "one snapshot, faster than per-chunk replay",
            f"{spread(snap['frames'])} frame, {ratio(median(snap['ms']), median(per_chunk['ms']))}"
            " of the per-chunk time",
            median(snap["frames"]) == 1 and median(snap["ms"]) < median(per_chunk["ms"]),
        ),
        Goal(
            "resume of a 1 MB answer (streaming or finished)",
            "the client gets the whole text",
            "; ".join(sorted({f for f in ws["streaming, ours"]["failure"] if f}))
            or spread(ws["streaming, ours"]["ms"], 1) + " ms",
            not any(ws["streaming, ours"]["failure"] + done["failure"]),
        ),
    ]
    per_message = (median(web["200 page"]["ms"]) - median(web["20 page"]["ms"])) / 180
    unstored = median(web["200 page, unstored"]["ms"]) - median(web["200 page"]["ms"])
    unstored_per_message = per_message + unstored / 100
    section.notes += [
        f"The 200-message page costs {num(per_message, 2)} ms per extra message with "
        "stored HTML. Rendered on every load instead (markdown-it-py, then nh3), each "
        "assistant message of 2 KB of demo Markdown costs "
        f"{num(unstored_per_message, 2)} ms: the HTML is now rendered once, when the "
        "answer ends, in its final transaction.",
        f"The resume rows' queries are counted in process on the same reads "
        f"(``stream_get`` + ``catch_up``), which took {num(median(snap['db ms']), 1)} ms "
        f"(the streaming {_mb(small_chars())} answer) and {num(median(done['db ms']), 1)} ms "
        "(finished 1 MB) there.",
    ]
    if any(ws["streaming, ours"]["failure"] + done["failure"]):
        section.notes.append(
            "The 1 MB resumes fail because the snapshot frame does not fit one websocket "
            "message: with non-ASCII escaped (``json.dumps`` default) the demo text's CJK "
            "sentence and emoji make 1,000,000 characters 1,096,873 bytes, over the 1 MiB "
            "(1,048,576 B) that daphne's autobahn allows per message in either direction "
            "(``--websocket-max-message-size``): the server fails the socket with 1011."
        )
    return section
