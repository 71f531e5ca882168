"""Encoding frames: every transport sends ``encode_frame``'s JSON, which must read back
as the very frame, whatever text a model or a client put in it."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from streaming.core.deltas import Delta
from streaming.frames import encode_frame, token_frame

# Text with lone surrogates too (JSON allows them, orjson refuses them), and integers
# beyond 64 bits (orjson refuses those as well).
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(st.text(), values, max_size=6))
def test_every_frame_reads_back_as_itself(frame: dict[str, object]) -> None:
    assert json.loads(encode_frame(frame)) == frame


def test_a_frame_is_compact_with_unicode_as_is() -> None:
    frame = token_frame("s1", Delta("日本語 😀", part="text"))
    assert encode_frame(frame) == (
        '{"type":"token","stream_id":"s1","part":"text","text":"日本語 😀"}'
    )
