"""The `!ai` command tree: parse, check who may run it, call a service, reply.

maubot's own argument parser answers bad input with generic messages, so the plugin takes the raw
text after the command word and routes it here, where every bad input gets a reply that says what
to do.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from attrs import define, frozen
from maubot import MessageEvent

from . import access
from .config import Settings
from .db import ACTIVE, RoomRow, Store
from .throttle import Throttle

REFUSAL_INTERVAL = 60.0


class UsageError(Exception):
    """Bad input from the user. The message is the whole reply, and says what to do."""


@define
class Invocation:
    evt: MessageEvent
    args: str
    settings: Settings
    # The working room the command was sent in, if it was sent in one.
    room: RoomRow | None


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
    def __init__(self, store: Store, settings: Callable[[], Settings]) -> None:
        self.store = store
        self.settings = settings
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

    def _find(self, args: str) -> tuple[CommandSpec | None, str]:
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
        sender = evt.sender
        if not access.is_allowed(settings, sender):
            await self._refuse(evt)
            return
        room = await self.store.get_room(evt.room_id)
        if room is not None and room.state != ACTIVE:
            room = None
        if room is not None and not access.may_act_in_room(settings, room.owner, sender):
            # Other members of a working room are ignored, as the owner's agent is not theirs.
            return
        spec, rest = self._find(args or "")
        prefix = settings.command_prefix
        if spec is None:
            word = (args or "").split()[0] if (args or "").strip() else ""
            reply = (
                f"Unknown command `{word}`. Send `!{prefix} help` for the list."
                if word
                else f"Send `!{prefix} help` for the list of commands."
            )
            await evt.reply(reply)
            return
        if spec.admin and not access.is_admin(settings, sender):
            await evt.reply(f"`!{prefix} {spec.name}` is for admins only.")
            return
        if spec.needs_room and room is None:
            await evt.reply(
                f"`!{prefix} {spec.name}` works in a working room. Send `!{prefix} rooms` "
                f"to list yours, or `!{prefix} start` to set up your Space."
            )
            return
        try:
            reply = await spec.handler(Invocation(evt, rest, settings, room))
        except UsageError as e:
            reply = str(e)
        if reply:
            await evt.reply(reply)

    async def _refuse(self, evt: MessageEvent) -> None:
        if self._refusals.allow(evt.sender):
            await evt.reply("Sorry, you are not allowed to use this bot.")

    async def _help(self, inv: Invocation) -> str:
        prefix = inv.settings.command_prefix
        lines = ["**Agent Spaces commands**", ""]
        for spec in self.specs.values():
            if spec.admin and not access.is_admin(inv.settings, inv.evt.sender):
                continue
            usage = f" {spec.usage}" if spec.usage else ""
            lines.append(f"- `!{prefix} {spec.name}{usage}`: {spec.help}")
        return "\n".join(lines)
