"""The server's Markdown (markdown-it-py + nh3) and the browser's (markdown-it +
DOMPurify) agree, so an answer looks the same live and after a reload."""

from __future__ import annotations

import pytest

from chatproject.chat.markdown import render_markdown

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SAMPLES = [
    "Plain text.",
    "# Title\n\n## Sub *title*\n\nSome **bold**, _italic_ and `code`.",
    "Line one  \nline two\\\nline three",
    "- one\n- two\n  - nested\n\n3. three\n4. four",
    "> a quote\n> > nested\n\n---\n\nafter the rule",
    "```python\nprint('<b>hi</b>')  # 3 < 4 && 5 > 2\n```",
    '```x" onclick="alert(1)\nodd info string\n```',
    "    indented code",
    '[a link](https://example.com/a?b=1&c=2 "its title") and <https://example.org>',
    "[relative](/conversations/1/) and [mail](mailto:a@example.com)",
    "[ref link][r]\n\n[r]: https://example.com/ref",
    "![an image](https://example.com/x.png) stays a link",
    "<b>raw html</b> <script>alert(1)</script> <img src=x onerror=alert(1)>",
    "[x](javascript:alert(1)) [y](data:text/html,hi) [z](vbscript:msgbox)",
    "Entities: &amp; &copy; &#x1F600; < > \" '",
    "*a **b** c* __d__ ~~not strikethrough~~",
    "| not | a table |\n| --- | --- |\n| in | commonmark |",
    "Unicode: 你好, emoji 🎉, RTL שלום",
    "1) paren list\n2) second\n\n* star\n+ plus",
    "Unclosed **bold and `code",
    "",
]

# Serialise a fragment canonically: attributes sorted, whitespace between blocks ignored.
NORMALIZE_JS = """
(html) => {
  const t = document.createElement('template');
  t.innerHTML = html;
  const esc = (s) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;');
  const walk = (node) => {
    if (node.nodeType === Node.TEXT_NODE) return node.data.trim() ? esc(node.data) : '';
    if (node.nodeType !== Node.ELEMENT_NODE) return '';
    const attrs = [...node.attributes].map((a) => `${a.name}="${esc(a.value)}"`).sort().join(' ');
    const inner = [...node.childNodes].map(walk).join('');
    return `<${node.localName}${attrs ? ' ' + attrs : ''}>${inner}</${node.localName}>`;
  };
  return [...t.content.childNodes].map(walk).join('');
}
"""


def test_server_and_browser_render_markdown_alike(chat_app):
    page = chat_app.new_page(chat_app.new_context())
    chat_app.start_conversation(page)  # a page that loads the vendored libraries

    client = page.evaluate(
        """async (samples) => {
            const { renderMarkdown } = await import('/static/chat/markdown.js');
            return samples.map(renderMarkdown);
        }""",
        SAMPLES,
    )
    server = [render_markdown(sample) for sample in SAMPLES]
    normalize = [page.evaluate(NORMALIZE_JS, html) for html in server + client]
    server_norm, client_norm = normalize[: len(SAMPLES)], normalize[len(SAMPLES) :]
    for sample, expected, actual in zip(SAMPLES, server_norm, client_norm, strict=True):
        assert actual == expected, f"differs for {sample!r}"
    assert "<a " in server_norm[8] and 'rel="noopener noreferrer nofollow"' in server_norm[8]
    for scheme in ("javascript:", "data:", "vbscript:"):
        assert f'href="{scheme}' not in " ".join(server_norm + client_norm).lower()
