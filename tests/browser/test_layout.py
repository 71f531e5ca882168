"""How the transcript behaves on screen: on a phone, while the reader scrolls, and as a
picture (test-artifacts/transcript.png; docs/screenshot.png with UPDATE_DOCS_SCREENSHOT=1)."""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

from tests.browser.conftest import (
    ARTIFACTS,
    ROOT,
    last_answer_id,
    send_prompt,
    wait_for_text,
    wait_status,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PHONE = {"viewport": {"width": 390, "height": 700}, "is_mobile": True, "has_touch": True}

SHOWCASE = [
    (
        "How does a reload resume a streaming answer?",
        """\
The answer is **saved as it is generated**, in small numbered chunks, and every page \
follows those chunks instead of the model:

1. The socket that sent the prompt *drives* the generation and sees each token at once.
2. Every sentence is written to the database as chunk `seq = 0, 1, 2, …`.
3. Other tabs, and a page after a reload, `resume` from the last `seq` they hold.

```python
await drive(stream_id, provider.stream(history), on_token=send_token)
```

> Nothing is shown twice and nothing goes missing: the final text is checked \
against its SHA-256.
""",
    ),
    (
        "And if I press Stop?",
        "The driver stops waiting for the model, saves what it has shown and ends the "
        "stream as *cancelled*: every tab keeps the same partial text, and so does "
        "the database.",
    ),
]


# Polled every animation frame: true once the reader's wheel scroll has ended (the same
# scrollTop for 5 frames in a row) away from the bottom.
SCROLLED_UP_AND_SETTLED = """() => {
    const s = document.querySelector('#scroller');
    const seen = (window.scrollSettle ??= { top: -1, frames: 0 });
    seen.frames = s.scrollTop === seen.top ? seen.frames + 1 : 0;
    seen.top = s.scrollTop;
    return seen.frames >= 5 && s.scrollHeight - s.scrollTop - s.clientHeight > 70;
}"""


def distance_from_bottom(page: Any) -> float:
    return page.evaluate(
        "() => { const s = document.querySelector('#scroller');"
        " return s.scrollHeight - s.scrollTop - s.clientHeight; }"
    )


def test_phone_sized_page_follows_the_answer_until_the_reader_scrolls_up(chat_app, fake_llm):
    # One paragraph a sentence: the answer outgrows a phone screen in a few seconds.
    fake_llm.reply = "\n\n".join(f"Paragraph {n} of the answer." for n in range(1, 46))
    fake_llm.token_delay = 0.02
    page = chat_app.new_page(chat_app.new_context(**PHONE))
    chat_app.start_conversation(page)

    send_prompt(page, "A long answer, please.")
    message_id = last_answer_id(page)
    wait_for_text(page, message_id, "Paragraph 22 ")
    assert distance_from_bottom(page) < 70  # following the text as it grows

    box = page.locator("#scroller").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -150)
    page.wait_for_function(SCROLLED_UP_AND_SETTLED)
    held = page.evaluate("() => document.querySelector('#scroller').scrollTop")
    assert held > 0 and distance_from_bottom(page) > 70
    wait_for_text(page, message_id, "Paragraph 34 ")
    # The reader stays where they scrolled to; a button offers the way back down.
    assert abs(page.evaluate("() => document.querySelector('#scroller').scrollTop") - held) < 2
    assert page.locator("#jump").is_visible()

    page.click("#jump")
    assert wait_status(page, message_id) == "done"
    assert distance_from_bottom(page) < 70

    # Fits the phone: nothing sideways, the composer in view, the buttons usable.
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    composer = page.locator("#composer").bounding_box()
    assert composer["y"] + composer["height"] <= 700 and composer["width"] <= 390
    assert page.locator("#send").is_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "transcript-phone.png")


def test_transcript_screenshot(chat_app, fake_llm):
    """A finished answer (its Thinking collapsed, its quiet line under it) and one still
    streaming (the fake model pauses mid-answer)."""
    context = chat_app.new_context(viewport={"width": 880, "height": 760}, device_scale_factor=2)
    page = chat_app.new_page(context)
    chat_app.start_conversation(page)

    (first_prompt, first_reply), (second_prompt, second_reply) = SHOWCASE
    fake_llm.reply, fake_llm.token_delay = first_reply, 0.005
    fake_llm.scenario = "reasoning_content"
    fake_llm.reasoning_reply = "They ask how a reload resumes. Explain the chunks, then seq."
    send_prompt(page, first_prompt)
    done_id = last_answer_id(page)
    assert wait_status(page, done_id) == "done"
    page.wait_for_function(  # the quiet line, time included
        "(id) => document.querySelector(`#message-${id} .message-meta`).textContent.endsWith(' s')",
        arg=done_id,
    )
    fake_llm.reply, fake_llm.scenario, fake_llm.hang_after = second_reply, "hang", 24
    send_prompt(page, second_prompt)
    streaming_id = last_answer_id(page, after=done_id)
    wait_for_text(page, streaming_id, "same partial")
    page.evaluate("() => document.activeElement.blur()")
    assert page.locator("#stop").is_visible()

    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "transcript.png"
    page.screenshot(path=path)
    assert path.stat().st_size > 10_000
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(path, ROOT / "docs" / "screenshot.png")
    page.click("#stop")  # or the paused model holds the server up at shutdown
    assert wait_status(page, streaming_id) == "cancelled"
