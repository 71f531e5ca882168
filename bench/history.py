"""Hot spots the benchmarks found, each fixed in the code, with the numbers of the full
runs before and after the fix. They come from earlier reports (``git show
<commit>:docs/benchmarks.md``, PostgreSQL + Redis on this machine), not from this run:
the report prints them under their own heading, so nothing measured today is mixed with
them."""

# The report is typeset: multiplication signs and arrows, on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

from bench.helpers import Table

INTRO = (
    "Each row is a hot spot found while measuring and fixed in the code. Before and after "
    "are medians of the full runs whose reports were committed at the commits named "
    "(`git show <commit>:docs/benchmarks.md`); the tables above are this run's."
)

#: (hot spot, fix, measure, before, after, runs)
FIXES: list[tuple[str, str, str, str, str, str]] = [
    (
        "each chunk write hopped from the database thread back to the event loop "
        "(`async_to_sync` in `on_commit`) while the loop traded the GIL with it",
        "the driver announces its chunks from the loop once the write returns",
        "token path, 1 fast stream",
        "0.13× the echo",
        "0.52×",
        "0f6527f → f8ee215",
    ),
    (
        "final statuses lost: a driver cancelled its pending channels-redis `receive`, "
        "which can swallow another socket's message, and the per-process inbox held only "
        "1,000 messages",
        "the listener ends on a stop message, never by cancel; capacity 10,000 (one inbox "
        "per process, not per socket)",
        "final statuses lost, 100 fast streams",
        "117 of 300",
        "0 of 300",
        "0f6527f → f8ee215",
    ),
    (
        "Channels' `AsyncConsumer.dispatch` sends every group event through its single "
        "database thread (`close_old_connections`), and its session middleware wraps "
        "every frame sent",
        "`StreamConsumerMixin.direct_events` skip the hop; websockets use "
        "`SocketAuthMiddlewareStack`",
        "fanout p99 at 1,000 viewers",
        "1,314 ms (2.18× plain `group_send`)",
        "197 ms (0.73×)",
        "f8ee215 → 6e1f952",
    ),
    (
        "a transaction and a Redis message per sentence, however fast the model",
        "writes at least `STREAMING_FLUSH_MIN_INTERVAL` apart, one channel-layer message "
        "per write, the last chunks written with the final status",
        "token path, 10 fast streams",
        "0.25× (4,607 tok/s)",
        "0.34× (15,347 tok/s)",
        "f8ee215 → 6e1f952",
    ),
    (
        "the per-prompt hops: the claim's status announced from the database thread, the "
        "prompt's two messages as two group sends",
        "announced from the loop; one group event for both messages",
        "first token, 100 prompts at once",
        "1,531 ms",
        "815 ms",
        "f8ee215 → 6e1f952",
    ),
    (
        "every page load rendered every answer's Markdown",
        "rendered once when the answer ends, stored with `MARKDOWN_VERSION`",
        "transcript page, 200 messages",
        "67 ms",
        "16 ms (measured side by side in 4.)",
        "f8ee215 → 6e1f952",
    ),
    (
        "a group message to a socket of the sending process (the driver's own, every "
        "write) went through Redis: the delivery script, then the process's blocking pop, "
        "its backup and its clean-up",
        "the component's layer receives through one pump per event loop and puts such a "
        "message straight into the channel's buffer",
        "streams one daphne carries at 40 tokens/s (p99 within 50 ms of the echo's)",
        "50 (75 within 57 ms)",
        "75 (within 24 ms; on a slower CPU, where the echo's own rate fell by half)",
        "7f3fca5 → 03a565d",
    ),
    (
        "every client frame's flood count went through Django's Redis cache on a worker "
        "thread (two to four round trips), in line with the prompts' database work: a "
        "burst's first rows waited for the counts of all the others",
        "`streaming.flood` counts from the event loop, a burst's counts in one pipeline on "
        "one connection",
        "first token of 100 prompts at once, p50 / p99",
        "1,213 / 1,242 ms",
        "858 / 904 ms",
        "03a565d → b3afa17",
    ),
    (
        "each prompt of a burst ran its own transaction through the ORM (five to seven "
        "statements, about 3 ms of the process's CPU), all of them sharing the one core "
        "with the prompts' frames and LLM requests",
        "prompts arriving while others are stored go together in the next transaction "
        "(`GroupCommit`, `create_streams`): one INSERT per kind of row for all",
        "first token of 100 prompts at once, p50 / p99",
        "506 / 553 ms (58d66e5, this section alone on the same machine; 858 / 904 in the "
        "last full run)",
        "209 / 218 ms",
        "58d66e5 → b35a84b",
    ),
    (
        "a writer round of 250 streams held the event loop 7 to 12 ms packing and parsing a "
        "Redis pipeline of two commands a group, and its database thread 8.6 ms of CPU in "
        "`bulk_create` and an UPDATE whose text grew with the streams",
        "the layer's `group_send_many` reads every group's members in one script a shard; "
        "the round's rows go in one hand-built INSERT, and on PostgreSQL its UPDATE and "
        "INSERT take the values in arrays (`unnest`): 2 ms on the loop, 1.7 ms on the thread",
        "streams one daphne carries at 40 tokens/s (p99 within 50 ms of the echo's)",
        "200",
        "250",
        "2cc0c07 → 35b51df",
    ),
    (
        "CPython's garbage collector: at 300 streams 269 young, 24 middle and 2 full "
        "collections in a run, 0.49 s, a full one holding the event loop 85 ms",
        "the server's ASGI module freezes the startup objects (`gc.freeze()`) and collects "
        "young garbage every 20,000 allocations, not 700: 6 young collections, 34 ms",
        "p99 token latency at 300 streams, ours over the echo's; fanout p99 at 1,000 viewers",
        "114.0 ms; 148.0 ms",
        "60.7 ms; 72.5 ms",
        "ccbcdff → 488c3a5",
    ),
]


def table() -> Table:
    fixes = Table("", ["hot spot", "fix", "measure", "before", "after", "runs"])
    for row in FIXES:
        fixes.add(*row)
    return fixes
