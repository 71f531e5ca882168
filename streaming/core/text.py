"""Text that every database can store and every client can hash."""

from __future__ import annotations

REPLACEMENT = "\ufffd"


def clean_text(text: str) -> str:
    """``text`` with NUL characters (PostgreSQL refuses them) and lone surrogates (they
    have no UTF-8 form) replaced by U+FFFD. Cheap when there is nothing to replace,
    which is always but for broken or hostile input."""
    if "\x00" in text:
        text = text.replace("\x00", REPLACEMENT)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Through UTF-16: valid pairs join into one character, lone halves become U+FFFD.
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text
