"""The lifecycle's rules, without Django."""

import pytest

from streaming.core.lifecycle import (
    ACTIVE,
    FINAL,
    Status,
    can_transition,
    sources_for,
    text_digest,
)


def test_claiming_is_only_possible_from_pending():
    assert sources_for(Status.STREAMING) == ("pending",)


@pytest.mark.parametrize("final", sorted(FINAL))
@pytest.mark.parametrize("target", list(Status))
def test_a_final_status_never_changes_again(final, target):
    assert not can_transition(final, target)


def test_done_requires_streaming_first():
    assert can_transition(Status.STREAMING, Status.DONE)
    assert not can_transition(Status.PENDING, Status.DONE)


@pytest.mark.parametrize("target", [Status.CANCELLED, Status.TIMEOUT, Status.ERROR])
def test_an_active_stream_can_end_without_text(target):
    assert all(can_transition(active, target) for active in ACTIVE)


def test_nothing_moves_back_to_pending():
    assert sources_for(Status.PENDING) == ()


def test_digest_counts_characters_and_hashes_utf8_bytes():
    length, sha = text_digest("héllo 世界 👋")
    assert length == 10
    assert sha == "69ff163495ba4fdfaa1fb81c3e754ca1d402bb44cd00946a14510eef395e8e68"
