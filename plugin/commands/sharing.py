"""Shared rooms and forks: `!ai invite`, `!ai remove`, `!ai fork`."""

from __future__ import annotations

from attrs import define

from ..spaces.collaborators import Collaborators
from ..spaces.forks import Forks
from .router import CommandRouter, Invocation


@define(eq=False)
class SharingCommands:
    collaborators: Collaborators
    forks: Forks

    def register(self, router: CommandRouter) -> None:
        router.add(
            "invite",
            "<@user:server>",
            "Add a collaborator to this room (the agent answers when mentioned)",
            self.invite,
            needs_room=True,
        )
        router.add(
            "remove", "<@user:server>", "Remove a collaborator", self.remove, needs_room=True
        )
        router.add(
            "fork",
            "",
            "As a reply to a message: a new room whose context is this one up to it",
            self.fork,
            needs_room=True,
        )

    async def invite(self, inv: Invocation) -> str:
        return await self.collaborators.invite(inv.working_room, inv.args)

    async def remove(self, inv: Invocation) -> str:
        return await self.collaborators.remove(inv.working_room, inv.args)

    async def fork(self, inv: Invocation) -> str:
        return await self.forks.fork(inv.working_room, inv.evt)
