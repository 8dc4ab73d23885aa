"""The reply convention: how the bot's answers relate to the user's events in the timeline.

"Answered" is provable from Matrix: the bot's reply carries `m.in_reply_to` pointing at the
user's event. This module is the one definition of it, for the live path and the catch-up alike.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field
from mautrix.types import MessageEvent

# Marks a reply that is still being streamed; the last edit drops it.
STREAMING_KEY = "org.agentspaces.streaming"
TEXT = "m.text"
NOTICE = "m.notice"


@define
class ReplyTarget:
    """Where an answer goes: a reply to `event_id`, in the thread `thread_root` if any."""

    room_id: str
    event_id: str
    thread_root: str | None = None

    @classmethod
    def of(cls, evt: MessageEvent, event_id: str | None = None) -> ReplyTarget:
        content = evt.content
        thread = content.get_thread_parent() if hasattr(content, "get_thread_parent") else None
        return cls(evt.room_id, event_id or evt.event_id, thread)

    def relation(self) -> dict[str, Any]:
        reply = {"event_id": self.event_id}
        if self.thread_root:
            return {
                "rel_type": "m.thread",
                "event_id": self.thread_root,
                "is_falling_back": False,
                "m.in_reply_to": reply,
            }
        return {"m.in_reply_to": reply}


def message_text(evt: MessageEvent) -> str:
    """The message without the quoted reply fallback that some clients prepend."""
    body = evt.content.body or ""
    if evt.content.get_reply_to() and body.startswith(("> <", "> * <")) and "\n" in body:
        lines = body.split("\n")
        while lines and lines[0].startswith("> "):
            lines.pop(0)
        body = "\n".join(lines)
    return body.strip()


def _relation(content: dict[str, Any]) -> dict[str, Any]:
    relation = content.get("m.relates_to")
    return relation if isinstance(relation, dict) else {}


def reply_target(content: dict[str, Any]) -> str | None:
    """The event a message replies to, if any."""
    target = (_relation(content).get("m.in_reply_to") or {}).get("event_id")
    return target if isinstance(target, str) else None


def is_agent_reply(content: dict[str, Any]) -> bool:
    """An agent's answer: the bot's text reply. Failure notices and command replies are notices."""
    return content.get("msgtype") == TEXT and reply_target(content) is not None


@define
class Timeline:
    """One room's messages, oldest first, with the bot's edits and replies resolved."""

    events: list[dict[str, Any]] = field(factory=list)
    # Event ids the bot replied to (with an answer or a failure notice).
    answered: set[str] = field(factory=set)
    # The bot's message id -> its final text after edits.
    final_text: dict[str, str] = field(factory=dict)


def resolve(events: list[dict[str, Any]], bot_id: str) -> Timeline:
    timeline = Timeline(events=events)
    for ev in events:
        if ev.get("sender") != bot_id:
            continue
        content = ev.get("content") or {}
        relation = _relation(content)
        if relation.get("rel_type") == "m.replace":
            new = content.get("m.new_content") or {}
            timeline.final_text[relation.get("event_id", "")] = str(new.get("body", ""))
            continue
        target = reply_target(content)
        if target:
            timeline.answered.add(target)
        timeline.final_text.setdefault(ev["event_id"], str(content.get("body", "")))
    return timeline
