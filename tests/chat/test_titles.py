"""A conversation's title from its first prompt: plain text, cut at a word."""

from __future__ import annotations

import pytest

from chatproject.chat.services import TITLE_CHARS, conversation_title

LONG = "How does a reload resume a streaming answer when the server restarts in the middle?"
# (prompt, title): the browser checks its own rule against these too.
TITLES = [
    ("Plans for **Friday**", "Plans for Friday"),
    ("# A heading\n\nand the body", "A heading and the body"),
    ("What does `seq` mean?", "What does seq mean?"),
    ("Read [the docs](https://example.com/docs) first", "Read the docs first"),
    ("> quoted\n- one\n- two\n+ three", "quoted one two three"),
    ("C# and #hashtags and snake_case stay", "C# and #hashtags and snake_case stay"),
    ("  lots \n\n of\tspace  ", "lots of space"),
    (LONG, "How does a reload resume a streaming answer when the server…"),
    ("word, " * 20, "word, word, word, word, word, word, word, word, word, word…"),
    ("x" * 80, "x" * (TITLE_CHARS - 1) + "…"),
    ("😀 " * 40, "😀 " * 29 + "😀…"),
    ("**", ""),
]


@pytest.mark.parametrize(("prompt", "title"), TITLES)
def test_a_title_is_the_prompt_as_plain_text_cut_at_a_word(prompt, title):
    assert conversation_title(prompt) == title


def test_a_title_is_about_title_chars_long_at_most():
    assert len(conversation_title(LONG * 3)) <= TITLE_CHARS + 1
