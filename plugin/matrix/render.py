"""Message content the bot sends: markdown rendered to Matrix HTML, safely, and edits.

Agent output and user text echoed in replies are untrusted: a prompt-injected agent could make
every client in the room fetch an attacker's media, or offer a `javascript:` link. So raw HTML is
escaped (mautrix's renderer does that), images are shown as links rather than embedded, and only
`https:`, `http:`, `mailto:` and `matrix:` links survive.
"""

from __future__ import annotations

from html import escape
from typing import Any

import commonmark
from mautrix.util.markdown import HtmlEscapingRenderer

from .replies import STREAMING_KEY

SAFE_SCHEMES = ("https:", "http:", "mailto:", "matrix:")


def safe_url(url: str) -> bool:
    return url.strip().lower().startswith(SAFE_SCHEMES)


class SafeRenderer(HtmlEscapingRenderer):
    def link(self, node: Any, entering: bool) -> None:
        if safe_url(node.destination or ""):
            super().link(node, entering)

    def image(self, node: Any, entering: bool) -> None:
        # An image becomes a link to it, labelled with its alt text (or its address); one that
        # may not be a link (mxc:, data:) leaves only the label.
        url = node.destination or ""
        if entering:
            if safe_url(url):
                self._raw(f'<a href="{escape(url)}">')
            if node.first_child is None:
                self.out(url)
        elif safe_url(url):
            self._raw("</a>")

    def _raw(self, html: str) -> None:
        # The base class escapes all literal output, raw HTML in the markdown included.
        commonmark.HtmlRenderer.lit(self, html)


_parser = commonmark.Parser()


def markdown_html(text: str) -> str:
    # A renderer keeps state while it renders, so each call gets its own.
    return SafeRenderer().render(_parser.parse(text))


def render(text: str, msgtype: str, streaming: bool = False) -> dict[str, Any]:
    content: dict[str, Any] = {"msgtype": msgtype, "body": text}
    html = markdown_html(text).strip()
    if html != f"<p>{escape(text, quote=False)}</p>":
        content["format"] = "org.matrix.custom.html"
        content["formatted_body"] = html
    if streaming:
        content[STREAMING_KEY] = True
    return content


def edit_content(original: str, new: dict[str, Any]) -> dict[str, Any]:
    """An edit of `original` to `new`. Its fallback for clients without edits is the plain
    body only: one copy of the HTML less keeps a long answer's edit under the size limit."""
    content = {k: v for k, v in new.items() if k not in ("formatted_body", "format")}
    content["body"] = f"* {new['body']}"
    content["m.new_content"] = new
    content["m.relates_to"] = {"rel_type": "m.replace", "event_id": original}
    return content
