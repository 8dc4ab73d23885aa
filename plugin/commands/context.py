"""The room's context: `!ai context`, `context clear|compact|share`, and `!ai retry`."""

from __future__ import annotations

from attrs import define

from ..conversation.context import ContextManager
from ..conversation.intake import Intake
from ..conversation.threads import thread_of
from ..errors import UsageError
from .router import CommandRouter, Handler, Invocation


@define(eq=False)
class ContextCommands:
    context: ContextManager
    intake: Intake

    def register(self, router: CommandRouter) -> None:
        def room_command(name: str, usage: str, help: str, handler: Handler) -> None:
            router.add(name, usage, help, handler, needs_room=True)

        room_command(
            "context",
            "",
            "Show this room's context: turns, estimated tokens, chat id, shared memory",
            self.show,
        )
        room_command(
            "context clear", "", "Start a new context (and a new chat id) in this room", self.clear
        )
        room_command(
            "context compact",
            "",
            "Replace this room's context by a summary the agent writes",
            self.compact,
        )
        room_command(
            "context share", "on|off", "Use your shared memory in this room, or not", self.share
        )
        room_command(
            "retry", "", "Send the last unanswered message again (or the last one)", self.retry
        )

    async def show(self, inv: Invocation) -> str:
        room = inv.working_room
        if inv.args:
            raise UsageError(
                f"Unknown `!{inv.settings.command_prefix} context {inv.args.split()[0]}`. "
                "Use `context`, `context clear`, `context compact` or `context share on|off`."
            )
        agent = inv.settings.agents.get(room.agent_id)
        if agent is None:
            return f"This room's agent `{room.agent_id}` is not configured any more."
        thread = thread_of(inv.evt, inv.settings)
        summary = await self.context.summary(room, agent, thread)
        unanswered = f" ({summary.unanswered} unanswered)" if summary.unanswered else ""
        share = "on" if summary.share_memory else "off"
        entries = f" ({summary.memory_entries} entries)" if summary.share_memory else ""
        where = "thread" if thread else "room"
        return "\n".join(
            [
                f"**Context of this {where}** (agent {agent.name})",
                f"- Turns: {summary.turns}{unanswered}",
                f"- Estimated tokens: {summary.tokens} of {summary.limit} "
                "(system prompt and memory included)",
                f"- Chat id: `{summary.chat_id[:8]}`",
                f"- Shared memory: {share}{entries}",
            ]
        )

    async def clear(self, inv: Invocation) -> str:
        # In a thread, the thread's context alone; in the room, the room's and its threads'.
        thread = thread_of(inv.evt, inv.settings)
        chat_id = await self.context.start_new(inv.working_room, inv.evt.event_id, thread=thread)
        return f"Context cleared. New chat id: `{chat_id[:8]}`."

    async def compact(self, inv: Invocation) -> None:
        # The answer comes from the room's queue, once the agent has written the summary.
        await self.intake.compact(inv.working_room, inv.evt)

    async def share(self, inv: Invocation) -> str:
        prefix = inv.settings.command_prefix
        value = inv.args.strip().lower()
        if value not in ("on", "off"):
            raise UsageError(f"Say `!{prefix} context share on` or `!{prefix} context share off`.")
        await self.context.set_share(inv.working_room, value == "on")
        if value == "on":
            return "Shared memory is on: this room's agent sees your memory entries."
        return "Shared memory is off: this room's agent no longer sees your memory entries."

    async def retry(self, inv: Invocation) -> None:
        # The answer itself is the reply, as a reply to the message it answers.
        await self.intake.retry(inv.working_room, inv.evt)
