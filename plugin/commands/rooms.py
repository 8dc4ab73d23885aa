"""The Space and room commands: start, agents, new, rooms, use, rename, archive."""

from __future__ import annotations

from attrs import define

from ..agents import find_agent
from ..errors import UsageError
from ..ops.settings import AgentSettings, Settings
from ..spaces.onboarding import Onboarding
from ..spaces.rooms import MAX_TITLE, WorkingRooms
from .router import CommandRouter, Invocation

# Bounds the listing of a user with very many rooms; the outbox splits what is still too long
# for one event.
MAX_LISTED_ROOMS = 200


def _agent_list(settings: Settings) -> str:
    return ", ".join(f"`{agent_id}`" for agent_id in settings.agents)


def _agent(settings: Settings, word: str, usage: str) -> AgentSettings:
    prefix = settings.command_prefix
    if not word:
        raise UsageError(
            f"Say which agent: `!{prefix} {usage}`. Agents: {_agent_list(settings)} "
            f"(`!{prefix} agents` describes them)."
        )
    agent = find_agent(settings, word)
    if agent is None:
        raise UsageError(
            f"Unknown agent `{word}`. Choose one of {_agent_list(settings)} "
            f"(`!{prefix} agents` describes them)."
        )
    return agent


def _title(settings: Settings, text: str, usage: str) -> str:
    title = " ".join(text.split())
    if len(title) > MAX_TITLE:
        raise UsageError(f"That title is too long: keep it to {MAX_TITLE} characters at most.")
    if not title and usage:
        raise UsageError(f"Give the new title: `!{settings.command_prefix} {usage}`.")
    return title


@define(eq=False)
class RoomCommands:
    onboarding: Onboarding
    rooms: WorkingRooms

    def register(self, router: CommandRouter) -> None:
        router.add(
            "start", "", "Set up your Space and its working rooms (safe to repeat)", self.start
        )
        router.add("agents", "", "List the agents you can talk to", self.agents)
        router.add("new", "<agent> [title]", "Open a new working room with an agent", self.new)
        router.add("rooms", "", "List your working rooms and their agents", self.list_rooms)
        router.add("use", "<agent>", "Switch this room's agent", self.use, needs_room=True)
        router.add("rename", "<title>", "Rename this room", self.rename, needs_room=True)
        router.add(
            "archive",
            "",
            "Remove this room from your Space (you keep its history)",
            self.archive,
            needs_room=True,
        )

    async def start(self, inv: Invocation) -> str:
        return await self.onboarding.start_message(inv.sender)

    async def agents(self, inv: Invocation) -> str:
        settings = inv.settings
        lines = ["**Agents**", ""]
        for agent in settings.agents.values():
            default = " (default)" if agent.id == settings.default_agent else ""
            description = f": {agent.description}" if agent.description else ""
            lines.append(f"- **{agent.name}** `{agent.id}`{default}{description}")
        prefix = settings.command_prefix
        lines += ["", f"Open a room with one: `!{prefix} new <agent> [title]`."]
        return "\n".join(lines)

    async def new(self, inv: Invocation) -> str:
        word, _, rest = inv.args.strip().partition(" ")
        agent = _agent(inv.settings, word, "new <agent> [title]")
        title = _title(inv.settings, rest, "") or agent.name
        room = await self.onboarding.new_room(inv.sender, agent.id, title)
        link = self.rooms.link(room.room_id)
        return f"New room with {agent.name}: [{room.title}]({link}). I invited you to it."

    async def list_rooms(self, inv: Invocation) -> str:
        prefix = inv.settings.command_prefix
        rooms = await self.rooms.store.rooms.of_owner(inv.sender)
        if not rooms:
            return (
                f"You have no working rooms. Send `!{prefix} start` to set up your Space, "
                f"or `!{prefix} new <agent>` for a room."
            )
        lines = [f"**Your working rooms** ({len(rooms)})", ""]
        for room in rooms[:MAX_LISTED_ROOMS]:
            agent = inv.settings.agents.get(room.agent_id)
            agent_name = agent.name if agent else f"{room.agent_id} (no longer configured)"
            here = " (this room)" if room.room_id == inv.evt.room_id else ""
            lines.append(f"- [{room.title}]({self.rooms.link(room.room_id)}): {agent_name}{here}")
        if len(rooms) > MAX_LISTED_ROOMS:
            lines.append(f"- … and {len(rooms) - MAX_LISTED_ROOMS} more, in your Space.")
        return "\n".join(lines)

    async def use(self, inv: Invocation) -> str:
        agent = _agent(inv.settings, inv.args.strip(), "use <agent>")
        if agent.id == inv.working_room.agent_id:
            return f"This room already talks to {agent.name}."
        await self.rooms.set_agent(inv.working_room, agent.id)
        return f"This room now talks to {agent.name}."

    async def rename(self, inv: Invocation) -> str:
        title = _title(inv.settings, inv.args, "rename <title>")
        await self.rooms.rename(inv.working_room, title)
        return f"Renamed this room to {title}."

    async def archive(self, inv: Invocation) -> None:
        # The farewell goes out before the bot leaves, since it cannot speak here afterwards.
        await self.rooms.archive(
            inv.working_room,
            farewell="Archived: this room is no longer in your Space, and I have left it. "
            "Its history stays with you.",
        )
