"""`!ai fork`, sent as a reply to a message in a working room: a new working room in the Space,
with the same agent and a new chat id, whose context is the conversation up to that message
(the exchange it belongs to included). The new room links back to the room it came from, and
its binding records where it came from, so that a rebuild from Matrix gives it that context
again (see `startup.rebuild`).
"""

from __future__ import annotations

from collections.abc import Callable
from logging import Logger

from attrs import define
from maubot.matrix import MaubotMatrixClient
from mautrix.types import MessageEvent

from ..conversation.context import SEED, ContextManager
from ..conversation.regenerate import answered_message
from ..conversation.threads import thread_of
from ..db import Store
from ..db.rows import NewTurn, RoomRow, TurnRow
from ..errors import UsageError
from ..matrix.encryption import Encryption
from ..matrix.outbox import Outbox
from ..ops.settings import Settings
from .onboarding import Onboarding
from .rooms import MAX_TITLE

ASSISTANT = "assistant"


def turns_up_to(turns: list[TurnRow], message_id: str) -> list[TurnRow] | None:
    """The turns up to the exchange of a user message: it, and its answer if it has one."""
    index = next(
        (i for i, t in enumerate(turns) if t.event_id == message_id and t.id != SEED), None
    )
    if index is None:
        return None
    end = index + 1
    if end < len(turns) and turns[end].role == ASSISTANT:
        end += 1
    return turns[:end]


@define(eq=False)
class Forks:
    client: MaubotMatrixClient
    encryption: Encryption
    store: Store
    context: ContextManager
    onboarding: Onboarding
    outbox: Outbox
    settings: Callable[[], Settings]
    log: Logger

    async def fork(self, room: RoomRow, evt: MessageEvent) -> str:
        settings = self.settings()
        prefix = settings.command_prefix
        target = evt.content.get_reply_to() if hasattr(evt.content, "get_reply_to") else None
        thread = thread_of(evt, settings)
        if thread and evt.content.relates_to.is_falling_back:
            # A thread's fallback reply (for clients without threads) points at the thread's
            # latest message, not at one the user chose.
            target = None
        if not target:
            raise UsageError(
                f"Send `!{prefix} fork` as a reply to the message to fork at: the new room "
                "gets the conversation up to it."
            )
        answered = await answered_message(self.encryption, room.room_id, target)
        message_id = answered[0] if answered is not None else target
        turns = turns_up_to(await self.context.conversation_turns(room, thread), message_id)
        if not turns:
            raise UsageError(
                "That message is not in this conversation's context any more, so there is "
                "nothing to fork from it."
            )
        base = room.title or room.agent_id
        title = f"{base[: MAX_TITLE - 7]} (fork)"
        new = await self.onboarding.new_room(
            room.owner, room.agent_id, title, (room.room_id, target)
        )
        await self.store.turns.add_answered(
            new.room_id, [NewTurn(None, t.role, t.content, t.sender, t.attachments) for t in turns]
        )
        origin = (
            f"https://matrix.to/#/{room.room_id}/{target}?via={self.client.mxid.split(':', 1)[1]}"
        )
        await self.outbox.notice(
            new.room_id,
            f"Forked from [{base}]({self.onboarding.rooms.link(room.room_id)}) at "
            f"[this message]({origin}): {len(turns)} turns of its context go on here.",
        )
        self.log.info(f"Forked {room.room_id} at {target} into {new.room_id}")
        return (
            f"Forked into [{new.title}]({self.onboarding.rooms.link(new.room_id)}), with the "
            f"{len(turns)} turns up to that message. I invited you to it."
        )
