"""The shared memory across a user's rooms: `!ai remember`, `!ai memory`, `!ai forget`."""

from __future__ import annotations

from ..db import Store
from ..errors import UsageError
from .router import CommandRouter, Invocation


class MemoryCommands:
    def __init__(self, store: Store) -> None:
        self.store = store

    def register(self, router: CommandRouter) -> None:
        router.add("remember", "<text>", "Add an entry to your shared memory", self.remember)
        router.add("memory", "", "List your shared memory", self.memory)
        router.add("forget", "<n|all>", "Remove memory entry n, or all of them", self.forget)

    async def remember(self, inv: Invocation) -> str:
        text = inv.args.strip()
        prefix = inv.settings.command_prefix
        if not text:
            raise UsageError(f"Say what to remember: `!{prefix} remember I prefer short answers`.")
        longest = inv.settings.memory_entry_chars
        if len(text) > longest:
            raise UsageError(
                f"That entry is {len(text)} characters long; keep it to {longest} at most."
            )
        count = len(await self.store.memory.of_user(inv.sender))
        if count >= inv.settings.memory_entries:
            raise UsageError(
                f"Your shared memory is full ({count} entries). Remove one with "
                f"`!{prefix} forget <n>` (`!{prefix} memory` lists them), then try again."
            )
        await self.store.memory.add(inv.sender, text)
        count += 1
        return (
            f"Remembered as entry {count}. Your rooms with shared memory on now see it "
            f"(`!{prefix} memory` lists the entries)."
        )

    async def memory(self, inv: Invocation) -> str:
        entries = await self.store.memory.of_user(inv.sender)
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
        entries = await self.store.memory.of_user(inv.sender)
        if arg == "all":
            await self.store.memory.delete(inv.sender, None)
            return f"Forgot all {len(entries)} entries of your shared memory."
        if not arg.isdigit() or not 1 <= int(arg) <= len(entries):
            if not entries:
                raise UsageError("Your shared memory is empty: there is nothing to forget.")
            raise UsageError(
                f"Say which entry to forget, 1 to {len(entries)} (see `!{prefix} memory`), "
                f"or `!{prefix} forget all`."
            )
        entry = entries[int(arg) - 1]
        await self.store.memory.delete(inv.sender, entry.id)
        return f"Forgot entry {arg}: {entry.content}"
