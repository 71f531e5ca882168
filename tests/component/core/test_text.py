"""Text every database can store and every client can hash."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streaming.core.text import clean_text


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("plain", "plain"),
        ("a\x00b", "a\ufffdb"),
        ("x\ud800y", "x\ufffdy"),
        ("\udfff", "\ufffd"),
        ("\ud83d\ude00", "😀"),
        ("emoji 👩‍💻 stays", "emoji 👩‍💻 stays"),
    ],
)
def test_nul_and_lone_surrogates_become_the_replacement_character(raw, clean):
    assert clean_text(raw) == clean


@given(st.text(st.characters(codec="utf-8")))
def test_text_that_utf8_can_encode_and_has_no_nul_is_unchanged(text):
    text = text.replace("\x00", "")
    assert clean_text(text) == text


@given(st.text())
def test_clean_text_always_encodes_and_keeps_its_length(text):
    cleaned = clean_text(text)
    cleaned.encode("utf-8")
    assert "\x00" not in cleaned
    assert len(cleaned) <= len(text)
