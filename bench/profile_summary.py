"""``python -m bench.profile_summary STACKS.txt [--top N] [--only-thread NAME]``: the hot
spots of a py-spy profile in collapsed-stack form (``py-spy record --format raw``, or
``python -m bench --profile DIR`` with ``.txt`` paths): each function's share of the
samples, by itself (self) and with what it calls (inclusive), idle samples left out.

Percentages are of the non-idle samples of the threads kept, so "40 %" reads as "40 %
of the time this process was busy".
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

#: Frames where a thread waits rather than works (the event loop's select, a pool's
#: queue, a lock): samples ending in them are idle.
IDLE = re.compile(
    r"(select \(selectors|_worker \(concurrent|Condition\.wait|Event\.wait|Queue\.get "
    r"\(queue|poll \(|epoll|_run_once \(asyncio/base_events.py:\d+\)$)"
)
_LINE = re.compile(r" \(([^()]*?):\d+\)")


def frames(stack: str) -> list[str]:
    """``fn (file:line)`` frames without line numbers, outermost first."""
    return [_LINE.sub(r" (\1)", frame) for frame in stack.split(";") if frame]


def summarise(text: str, *, top: int, thread: str | None) -> str:
    selfs: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    busy = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        parts = frames(stack)
        if thread and not any(thread in p for p in parts[:1]):
            continue
        if not parts or IDLE.search(stack.split(";")[-1]):
            continue
        samples = int(count)
        busy += samples
        selfs[parts[-1]] += samples
        for frame in set(parts):
            inclusive[frame] += samples
    if not busy:
        return "no busy samples"
    lines = [f"{busy} busy samples", "", "self %  function"]
    lines += [f"{n / busy * 100:5.1f}  {name}" for name, n in selfs.most_common(top)]
    lines += ["", "incl %  function"]
    lines += [f"{n / busy * 100:5.1f}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


def callers(text: str, name: str, *, depth: int, top: int) -> str:
    """Who calls ``name``: the ``depth`` frames above it, by share of the busy samples."""
    paths: Counter[str] = Counter()
    busy = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit() or IDLE.search(stack.split(";")[-1]):
            continue
        busy += int(count)
        parts = frames(stack)
        for index, frame in enumerate(parts):
            if name in frame:
                paths[" < ".join(reversed(parts[max(0, index - depth) : index + 1]))] += int(count)
                break
    lines = [f"callers of {name} ({depth} up), % of {busy} busy samples"]
    lines += [f"{n / busy * 100:5.1f}  {path}" for path, n in paths.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_summary", description=__doc__)
    parser.add_argument("stacks", type=Path)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--only-thread", help="keep the stacks whose thread holds this")
    parser.add_argument("--callers", help="show who calls the frames holding this instead")
    parser.add_argument("--depth", type=int, default=3)
    args = parser.parse_args(argv)
    text = args.stacks.read_text()
    if args.callers:
        print(callers(text, args.callers, depth=args.depth, top=args.top))
    else:
        print(summarise(text, top=args.top, thread=args.only_thread))
    return 0


if __name__ == "__main__":
    sys.exit(main())
