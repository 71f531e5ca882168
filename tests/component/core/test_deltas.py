"""What a text source yields: Delta and Finish, and how the driver reads what the LLM
server reported (usage, finish reason, model)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streaming.core.deltas import (
    REASONING,
    SERVER_FINISH_REASONS,
    TEXT,
    Delta,
    Finish,
    as_delta,
    clean_model,
    clean_usage,
    final_finish_reason,
)

# --- Delta --------------------------------------------------------------------------


def test_a_delta_is_answer_text_unless_told_otherwise() -> None:
    assert Delta("Hi").part == TEXT


@pytest.mark.parametrize("part", ["image", "", "Text", None])
def test_a_delta_of_an_unknown_part_is_refused(part) -> None:
    with pytest.raises(ValueError, match="part must be one of"):
        Delta("x", part)


@pytest.mark.parametrize("text", [None, b"bytes", 3, ["a"]])
def test_a_delta_whose_text_is_not_a_str_is_refused(text) -> None:
    with pytest.raises(TypeError, match="must be a str"):
        Delta(text)


def test_a_delta_cannot_be_changed_once_made() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Delta("x").text = "y"  # type: ignore[misc]


def test_an_empty_delta_is_a_valid_delta() -> None:
    assert Delta("", REASONING) == Delta("", REASONING)


def test_a_finish_may_report_nothing_at_all() -> None:
    assert Finish() == Finish(finish_reason=None, model=None, usage=None)


# --- as_delta -----------------------------------------------------------------------


def test_a_plain_string_is_answer_text() -> None:
    assert as_delta("Hello") == Delta("Hello", TEXT)


def test_a_delta_is_taken_as_it_is() -> None:
    delta = Delta("hm", REASONING)
    assert as_delta(delta) is delta


@pytest.mark.parametrize("item", [None, b"bytes", 7, Finish(), {"text": "x"}])
def test_anything_else_is_not_a_delta(item) -> None:
    with pytest.raises(TypeError, match="a delta is a str or a Delta"):
        as_delta(item)


# --- clean_usage --------------------------------------------------------------------


@pytest.mark.parametrize("usage", [None, {}, {"total_tokens": 12}])
def test_usage_without_any_known_count_is_none(usage) -> None:
    assert clean_usage(usage) is None


def test_the_three_counts_are_kept_and_the_others_dropped() -> None:
    reported = {"prompt_tokens": 7, "completion_tokens": 5, "reasoning_tokens": 2, "total": 14}
    assert clean_usage(reported) == {
        "prompt_tokens": 7,
        "completion_tokens": 5,
        "reasoning_tokens": 2,
    }


def test_a_missing_count_is_none() -> None:
    assert clean_usage({"prompt_tokens": 3}) == {
        "prompt_tokens": 3,
        "completion_tokens": None,
        "reasoning_tokens": None,
    }


@pytest.mark.parametrize("value", [-1, 1.5, 2.0, "3", True, False, None, [1]])
def test_a_count_that_is_not_a_non_negative_int_is_none(value) -> None:
    assert clean_usage({"prompt_tokens": 4, "completion_tokens": value}) == {
        "prompt_tokens": 4,
        "completion_tokens": None,
        "reasoning_tokens": None,
    }


def test_usage_whose_counts_are_all_invalid_is_none() -> None:
    assert clean_usage({"prompt_tokens": -1, "completion_tokens": "x"}) is None


def test_zero_is_a_count_not_a_missing_one() -> None:
    assert clean_usage({"completion_tokens": 0})["completion_tokens"] == 0


@given(st.dictionaries(st.text(max_size=20), st.one_of(st.integers(), st.none(), st.text())))
def test_clean_usage_is_none_or_the_three_counts_each_a_non_negative_int_or_none(usage) -> None:
    counts = clean_usage(usage)
    if counts is not None:
        assert set(counts) == {"prompt_tokens", "completion_tokens", "reasoning_tokens"}
        assert any(v is not None for v in counts.values())
        assert all(v is None or (type(v) is int and v >= 0) for v in counts.values())


# --- clean_model --------------------------------------------------------------------


def test_a_model_name_is_kept_as_reported() -> None:
    assert clean_model("gpt-x-mini") == "gpt-x-mini"


@pytest.mark.parametrize("model", [None, 3, {"id": "m"}])
def test_a_model_that_is_not_a_str_is_unknown(model) -> None:
    assert clean_model(model) == ""


def test_a_long_model_name_is_cut_to_what_the_column_holds() -> None:
    assert clean_model("m" * 500) == "m" * 200


# --- final_finish_reason ------------------------------------------------------------


@pytest.mark.parametrize("reported", sorted(SERVER_FINISH_REASONS))
def test_a_stream_that_ended_by_itself_records_the_servers_reason(reported) -> None:
    assert final_finish_reason("done", reported) == reported


@pytest.mark.parametrize("reported", [None, "", "tool_calls", "STOP"])
def test_a_stream_that_ended_by_itself_with_an_unknown_reason_records_stop(reported) -> None:
    assert final_finish_reason("done", reported) == "stop"


@pytest.mark.parametrize("status", ["cancelled", "error", "timeout"])
@pytest.mark.parametrize("reported", [None, "stop", "length"])
def test_a_stream_ended_otherwise_records_its_own_status(status, reported) -> None:
    assert final_finish_reason(status, reported) == status
