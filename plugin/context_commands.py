"""`!ai context …`, `!ai retry` and the shared memory commands: parse, call a service, reply."""

from __future__ import annotations

from .commands import CommandRouter, Invocation, UsageError
from .context import ContextManager
from .db import RoomRow, Store
from .dispatch import Dispatcher

MAX_MEMORY_ENTRY = 2000


def register(
    router: CommandRouter, store: Store, context: ContextManager, dispatcher: Dispatcher
) -> None:
    commands = ContextCommands(store, context, dispatcher)
    router.add(
        "context",
        "",
        "Show this room's context: turns, estimated tokens, chat id, shared memory",
        commands.show,
        needs_room=True,
    )
    router.add(
        "context clear",
        "",
        "Start a new context (and a new chat id) in this room",
        commands.clear,
        needs_room=True,
    )
    router.add(
        "context compact",
        "",
        "Replace this room's context by a summary the agent writes",
        commands.compact,
        needs_room=True,
    )
    router.add(
        "context share",
        "on|off",
        "Use your shared memory in this room, or not",
        commands.share,
        needs_room=True,
    )
    router.add(
        "retry",
        "",
        "Send the last unanswered message again (or the last one)",
        commands.retry,
        needs_room=True,
    )
    router.add("remember", "<text>", "Add an entry to your shared memory", commands.remember)
    router.add("memory", "", "List your shared memory", commands.memory)
    router.add("forget", "<n|all>", "Remove memory entry n, or all of them", commands.forget)


class ContextCommands:
    def __init__(self, store: Store, context: ContextManager, dispatcher: Dispatcher) -> None:
        self.store = store
        self.context = context
        self.dispatcher = dispatcher

    @staticmethod
    def _room(inv: Invocation) -> RoomRow:
        # The router only calls needs_room handlers with a room.
        assert inv.room is not None
        return inv.room

    async def show(self, inv: Invocation) -> str:
        room = self._room(inv)
        if inv.args:
            raise UsageError(
                f"Unknown `!{inv.settings.command_prefix} context {inv.args.split()[0]}`. "
                "Use `context`, `context clear`, `context compact` or `context share on|off`."
            )
        agent = inv.settings.agents.get(room.agent_id)
        if agent is None:
            return f"This room's agent `{room.agent_id}` is not configured any more."
        summary = await self.context.summary(room, agent)
        unanswered = f" ({summary.unanswered} unanswered)" if summary.unanswered else ""
        share = "on" if summary.share_memory else "off"
        entries = f" ({summary.memory_entries} entries)" if summary.share_memory else ""
        return "\n".join(
            [
                f"**Context of this room** (agent {agent.name})",
                f"- Turns: {summary.turns}{unanswered}",
                f"- Estimated tokens: {summary.tokens} of {summary.limit} "
                "(system prompt and memory included)",
                f"- Chat id: `{summary.chat_id[:8]}`",
                f"- Shared memory: {share}{entries}",
            ]
        )

    async def clear(self, inv: Invocation) -> str:
        chat_id = await self.context.start_new(self._room(inv), inv.evt.event_id)
        return f"Context cleared. New chat id: `{chat_id[:8]}`."

    async def compact(self, inv: Invocation) -> None:
        # The dispatcher answers once the agent has written the summary.
        await self.dispatcher.compact(self._room(inv), inv.evt)

    async def share(self, inv: Invocation) -> str:
        prefix = inv.settings.command_prefix
        value = inv.args.strip().lower()
        if value not in ("on", "off"):
            raise UsageError(f"Say `!{prefix} context share on` or `!{prefix} context share off`.")
        await self.context.set_share(self._room(inv), value == "on")
        if value == "on":
            return "Shared memory is on: this room's agent sees your memory entries."
        return "Shared memory is off: this room's agent no longer sees your memory entries."

    async def retry(self, inv: Invocation) -> None:
        # The answer itself is the reply, as a reply to the message it answers.
        await self.dispatcher.retry(self._room(inv), inv.evt)

    async def remember(self, inv: Invocation) -> str:
        text = inv.args.strip()
        prefix = inv.settings.command_prefix
        if not text:
            raise UsageError(f"Say what to remember: `!{prefix} remember I prefer short answers`.")
        if len(text) > MAX_MEMORY_ENTRY:
            raise UsageError(
                f"That entry is {len(text)} characters long; keep it under {MAX_MEMORY_ENTRY}."
            )
        await self.store.add_memory(inv.evt.sender, text)
        count = len(await self.store.memory(inv.evt.sender))
        return (
            f"Remembered as entry {count}. Your rooms with shared memory on now see it "
            f"(`!{prefix} memory` lists the entries)."
        )

    async def memory(self, inv: Invocation) -> str:
        entries = await self.store.memory(inv.evt.sender)
        prefix = inv.settings.command_prefix
        if not entries:
            return f"Your shared memory is empty. Add to it with `!{prefix} remember <text>`."
        lines = ["**Your shared memory**", ""]
        lines += [f"{n}. {entry.content}" for n, entry in enumerate(entries, 1)]
        lines += ["", f"Remove one with `!{prefix} forget <n>`, all with `!{prefix} forget all`."]
        return "\n".join(lines)

    async def forget(self, inv: Invocation) -> str:
        arg = inv.args.strip().lower()
        prefix = inv.settings.command_prefix
        entries = await self.store.memory(inv.evt.sender)
        if arg == "all":
            await self.store.delete_memory(inv.evt.sender, None)
            return f"Forgot all {len(entries)} entries of your shared memory."
        if not arg.isdigit() or not 1 <= int(arg) <= len(entries):
            if not entries:
                raise UsageError("Your shared memory is empty: there is nothing to forget.")
            raise UsageError(
                f"Say which entry to forget, 1 to {len(entries)} (see `!{prefix} memory`), "
                f"or `!{prefix} forget all`."
            )
        entry = entries[int(arg) - 1]
        await self.store.delete_memory(inv.evt.sender, entry.id)
        return f"Forgot entry {arg}: {entry.content}"
