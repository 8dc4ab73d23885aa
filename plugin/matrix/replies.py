"""The reply convention: how the bot's answers relate to the user's events in the timeline.

"Answered" is provable from Matrix: the bot's final reply (an answer, or a failure notice) carries
`m.in_reply_to` pointing at the user's event. A reply still flagged as streaming is not an answer,
nor is a part of a long answer that more parts follow. This module is the one definition of it,
for the live path and the catch-up alike.

In an encrypted room the timeline is read decrypted (see `encryption`). A reply of the bot's that
cannot be decrypted (its keys were lost with maubot's crypto store) still shows, in the clear,
which event it replies to: it counts as answered, so that nothing is answered twice, but its text
is unknown.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field
from mautrix.types import MessageEvent

# Marks a reply that is still being streamed; the last edit drops it.
STREAMING_KEY = "org.agentspaces.streaming"
# Marks a complete part of a long answer that more parts follow.
CONTINUED_KEY = "org.agentspaces.continued"
# Marks a reply that ends in a failure notice: final, but not the agent's answer.
FAILED_KEY = "org.agentspaces.failed"
# The user events that one notice answers (messages not sent to the agent, counted together).
COVERS_KEY = "org.agentspaces.covers"
# Marks a reply that tells something about the user's message (what a voice message said) but
# is no part of its answer: it answers nothing.
ASIDE_KEY = "org.agentspaces.aside"
TEXT = "m.text"
NOTICE = "m.notice"
ENCRYPTED = "m.room.encrypted"
# Parts of an answer that are files (an agent's image, a voice answer): no text to take over.
FILE_MSGTYPES = ("m.image", "m.file", "m.audio", "m.video")


def is_file(content: dict[str, Any]) -> bool:
    return content.get("msgtype") in FILE_MSGTYPES


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


def is_final(content: dict[str, Any]) -> bool:
    """A reply, or a part of one, that will not change any more."""
    return not content.get(STREAMING_KEY)


def ends_answer(content: dict[str, Any]) -> bool:
    """The content of a final reply that completes an answer: not still streaming, and not a
    part of a long answer that more parts follow."""
    return is_final(content) and not content.get(CONTINUED_KEY)


@define
class Reply:
    """One of the bot's replies to a user event, with its edits applied."""

    event_id: str
    content: dict[str, Any]

    @property
    def text(self) -> str:
        return str(self.content.get("body", ""))


@define
class Timeline:
    """One room's messages, oldest first, with the bot's edits and replies resolved."""

    events: list[dict[str, Any]] = field(factory=list)
    # The user event id -> the bot's replies to it, oldest first, edits applied.
    replies: dict[str, list[Reply]] = field(factory=dict)
    # User events a notice of the bot answered without replying to each (`COVERS_KEY`).
    covered: set[str] = field(factory=set)
    # Events still encrypted: the bot could not decrypt them.
    unreadable: set[str] = field(factory=set)

    def answered(self, event_id: str) -> bool:
        """The one definition of "answered": a final answer or failure notice is in Matrix."""
        replies = self.replies.get(event_id) or []
        return event_id in self.covered or any(ends_answer(r.content) for r in replies)

    def answer_text(self, event_id: str) -> str | None:
        """The whole text of an agent's answer (its parts joined), if it is complete."""
        replies = [r for r in self.replies.get(event_id) or [] if not is_file(r.content)]
        if not self.answered(event_id) or not all(
            r.content.get("msgtype") == TEXT for r in replies
        ):
            return None
        return "".join(r.text for r in replies)

    def interrupted(self, event_id: str) -> list[str]:
        """The text parts of an answer that was cut off (a stop or a crash while it streamed)."""
        if self.answered(event_id):
            return []
        return [r.event_id for r in self.replies.get(event_id) or [] if not is_file(r.content)]


def resolve(events: list[dict[str, Any]], bot_id: str) -> Timeline:
    timeline = Timeline(events=events)
    by_id: dict[str, Reply] = {}
    for ev in events:
        if ev.get("type") == ENCRYPTED:
            timeline.unreadable.add(ev.get("event_id", ""))
        if ev.get("sender") != bot_id:
            continue
        content = ev.get("content") or {}
        relation = _relation(content)
        if ev.get("type") == ENCRYPTED:
            # Only the relation is in the clear: an edit changes nothing, a reply counts as final.
            content = {"m.relates_to": relation}
        if relation.get("rel_type") == "m.replace":
            original = by_id.get(relation.get("event_id", ""))
            new = content.get("m.new_content")
            if isinstance(new, dict):
                _cover(timeline, new)
                if original is not None:
                    relates_to = original.content.get("m.relates_to")
                    original.content = {**new, "m.relates_to": relates_to}
            continue
        _cover(timeline, content)
        target = reply_target(content)
        if target and not content.get(ASIDE_KEY):
            reply = Reply(ev["event_id"], content)
            by_id[reply.event_id] = reply
            timeline.replies.setdefault(target, []).append(reply)
    return timeline


def _cover(timeline: Timeline, content: dict[str, Any]) -> None:
    covers = content.get(COVERS_KEY)
    if isinstance(covers, list):
        timeline.covered.update(e for e in covers if isinstance(e, str))
