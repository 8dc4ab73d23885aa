"""Message content the bot sends: markdown rendered to Matrix HTML, and edits of a message."""

from __future__ import annotations

from html import escape
from typing import Any

from mautrix.util import markdown

from .replies import STREAMING_KEY


def render(text: str, msgtype: str, streaming: bool = False) -> dict[str, Any]:
    content: dict[str, Any] = {"msgtype": msgtype, "body": text}
    html = markdown.render(text).strip()
    if html != f"<p>{escape(text, quote=False)}</p>":
        content["format"] = "org.matrix.custom.html"
        content["formatted_body"] = html
    if streaming:
        content[STREAMING_KEY] = True
    return content


def edit_content(original: str, new: dict[str, Any]) -> dict[str, Any]:
    content = {k: v for k, v in new.items() if k != "formatted_body"}
    content["body"] = f"* {new['body']}"
    if "formatted_body" in new:
        content["formatted_body"] = f"* {new['formatted_body']}"
    content["m.new_content"] = new
    content["m.relates_to"] = {"rel_type": "m.replace", "event_id": original}
    return content
