"""Message content the bot sends: markdown rendered to Matrix HTML, safely, and edits.

Agent output and user text echoed in replies are untrusted: a prompt-injected agent could make
every client in the room fetch an attacker's media, or offer a `javascript:` link. So raw HTML is
escaped (mautrix's renderer does that), images are shown as links rather than embedded, and only
`https:`, `http:`, `mailto:` and `matrix:` links survive.
"""

from __future__ import annotations

import json
import re
from html import escape
from typing import Any

import commonmark
from mautrix.util.markdown import HtmlEscapingRenderer

from .replies import STREAMING_KEY

SAFE_SCHEMES = ("https:", "http:", "mailto:", "matrix:")
# The most text one message holds, counted as its JSON-escaped size: an edit carries the text
# three times (body, new body, HTML), and an encrypted event grows by a third, which keeps every
# event well under Matrix's 64 KiB. Longer text goes out as consecutive messages.
PART_BUDGET = 10_000
# A part ends at a paragraph, a line or a word when one is this close to the budget.
_SPLIT_WINDOW = 0.3


def escaped_size(text: str) -> int:
    return len(json.dumps(text)) - 2


def split_point(text: str, budget: int) -> int:
    """Where a part that outgrew the budget ends: the latest paragraph, line or word break in
    the window before the budget, else the budget itself (in characters that fit)."""
    limit = len(text)
    while limit > 1 and escaped_size(text[:limit]) > budget:
        limit = max(1, int(limit * budget / escaped_size(text[:limit])) - 1)
    floor = int(limit * (1 - _SPLIT_WINDOW))
    for separator in ("\n\n", "\n", " "):
        cut = text.rfind(separator, floor, limit)
        if cut > 0:
            return cut + len(separator)
    return limit


def split_text(text: str, budget: int = PART_BUDGET) -> list[str]:
    """Text cut into pieces that each fit the budget, at paragraph, line or word breaks."""
    pieces: list[str] = []
    while escaped_size(text) > budget:
        cut = split_point(text, budget)
        pieces.append(text[:cut])
        text = text[cut:]
    return [*pieces, text]


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


# Text without any of these renders as one plain paragraph: no need to run the parser.
_MARKUP = re.compile(r"[\\`*_\[\]()<>#!~|&\n]|^\s*[-+>0-9]|^(?: {4}|\t)|https?:|mailto:|www\.")


def render(text: str, msgtype: str, streaming: bool = False) -> dict[str, Any]:
    content: dict[str, Any] = {"msgtype": msgtype, "body": text}
    html = markdown_html(text).strip() if _MARKUP.search(text) else ""
    if html and html != f"<p>{escape(text, quote=False)}</p>":
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
