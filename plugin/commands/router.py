"""The `!ai` command tree: parse, check who may run it, call a handler, reply.

maubot's own argument parser answers bad input with generic messages, so the plugin takes the raw
text after the command word and routes it here, where every bad input gets a reply that says what
to do, and a homeserver error is told to the user once, for every command.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from logging import Logger

from attrs import define, frozen
from mautrix.errors import MatrixError
from mautrix.types import MessageEvent

from ..db import Store
from ..db.rows import ACTIVE, RoomRow
from ..errors import UsageError
from ..matrix.outbox import Outbox
from ..matrix.replies import ReplyTarget
from ..ops import access
from ..ops.settings import Settings
from ..ops.throttle import Throttle

REFUSAL_INTERVAL = 60.0


@define
class Invocation:
    evt: MessageEvent
    args: str
    settings: Settings
    # The working room the command was sent in, if it was sent in one.
    room: RoomRow | None

    @property
    def sender(self) -> str:
        return self.evt.sender

    @property
    def working_room(self) -> RoomRow:
        # The router only calls needs_room handlers with a room.
        assert self.room is not None
        return self.room


Handler = Callable[[Invocation], Awaitable[str | None]]


@frozen
class CommandSpec:
    name: str
    usage: str
    help: str
    handler: Handler
    needs_room: bool = False
    admin: bool = False


class CommandRouter:
    def __init__(
        self, store: Store, outbox: Outbox, settings: Callable[[], Settings], log: Logger
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.settings = settings
        self.log = log
        self.specs: dict[str, CommandSpec] = {}
        self._refusals = Throttle(REFUSAL_INTERVAL)
        self.add("help", "", "Show this list of commands", self._help)

    def add(
        self,
        name: str,
        usage: str,
        help: str,
        handler: Handler,
        *,
        needs_room: bool = False,
        admin: bool = False,
    ) -> None:
        self.specs[name] = CommandSpec(name, usage, help, handler, needs_room, admin)

    def find(self, args: str) -> tuple[CommandSpec | None, str]:
        words = args.split()
        # The longest name wins, so "context clear" beats "context".
        for length in range(min(len(words), 3), 0, -1):
            name = " ".join(words[:length]).lower()
            if name in self.specs:
                rest = args.strip()
                for word in words[:length]:
                    rest = rest[len(word) :].lstrip()
                return self.specs[name], rest
        return None, args

    async def handle(self, evt: MessageEvent, args: str) -> None:
        settings = self.settings()
        if not access.is_allowed(settings, evt.sender):
            if self._refusals.allow(evt.sender):
                await self._reply(evt, "Sorry, you are not allowed to use this bot.")
            return
        room = await self.store.rooms.get(evt.room_id)
        if room is not None and room.state != ACTIVE:
            room = None
        if room is not None and not access.may_act_in_room(settings, room.owner, evt.sender):
            # Other members of a working room are ignored, as the owner's agent is not theirs.
            return
        reply = await self._run(Invocation(evt, args or "", settings, room))
        if reply:
            await self._reply(evt, reply)

    async def _run(self, inv: Invocation) -> str | None:
        spec, rest = self.find(inv.args)
        prefix = inv.settings.command_prefix
        if spec is None:
            word = inv.args.split()[0] if inv.args.strip() else ""
            if word:
                return f"Unknown command `{word}`. Send `!{prefix} help` for the list."
            return f"Send `!{prefix} help` for the list of commands."
        if spec.admin and not access.is_admin(inv.settings, inv.sender):
            return f"`!{prefix} {spec.name}` is for admins only."
        if spec.needs_room and inv.room is None:
            return (
                f"`!{prefix} {spec.name}` works in a working room. Send `!{prefix} rooms` "
                f"to list yours, or `!{prefix} start` to set up your Space."
            )
        try:
            return await spec.handler(Invocation(inv.evt, rest, inv.settings, inv.room))
        except UsageError as e:
            return str(e)
        except MatrixError as e:
            self.log.warning(f"`{spec.name}` in {inv.evt.room_id} failed in Matrix: {e}")
            return (
                f"The homeserver refused that ({e}), so it may be done only in part. Send it "
                "again later to finish."
            )

    async def _reply(self, evt: MessageEvent, text: str) -> None:
        try:
            await self.outbox.reply(ReplyTarget.of(evt), text)
        except MatrixError as e:
            self.log.warning(f"Could not reply to {evt.event_id} in {evt.room_id}: {e}")

    async def _help(self, inv: Invocation) -> str:
        prefix = inv.settings.command_prefix
        lines = ["**Agent Spaces commands**", ""]
        for spec in self.specs.values():
            if spec.admin and not access.is_admin(inv.settings, inv.sender):
                continue
            usage = f" {spec.usage}" if spec.usage else ""
            lines.append(f"- `!{prefix} {spec.name}{usage}`: {spec.help}")
        return "\n".join(lines)
