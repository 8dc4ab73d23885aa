"""`!ai voice on|off`: the room's answers also arrive as voice messages, or not."""

from __future__ import annotations

from attrs import define

from ..errors import UsageError
from ..spaces.bindings import Bindings
from .router import CommandRouter, Invocation


@define(eq=False)
class VoiceCommands:
    bindings: Bindings

    def register(self, router: CommandRouter) -> None:
        router.add(
            "voice",
            "on|off",
            "Also answer with voice messages in this room, or not",
            self.voice,
            needs_room=True,
        )

    async def voice(self, inv: Invocation) -> str:
        prefix = inv.settings.command_prefix
        value = inv.args.strip().lower()
        if value not in ("on", "off"):
            raise UsageError(f"Say `!{prefix} voice on` or `!{prefix} voice off`.")
        if value == "on" and inv.settings.media.speak is None:
            raise UsageError(
                "Voice answers are not set up on this bot: an admin can configure `speech.speak`."
            )
        # The binding in Matrix first, then the database (`spaces.bindings`).
        await self.bindings.change(inv.working_room, voice=value == "on")
        if value == "on":
            return "Voice is on: this room's answers also arrive as voice messages."
        return "Voice is off: this room's answers arrive as text only."
