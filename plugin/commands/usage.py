"""`!ai usage`: a user's messages and tokens per agent, today and this month (UTC)."""

from __future__ import annotations

from attrs import define

from ..conversation.quota import today
from ..db import Store
from .router import CommandRouter, Invocation


@define(eq=False)
class UsageCommands:
    store: Store

    def register(self, router: CommandRouter) -> None:
        router.add(
            "usage", "", "Your messages and tokens per agent, today and this month", self.usage
        )

    async def usage(self, inv: Invocation) -> str:
        day = today()
        rows = await self.store.agent_usage.since(inv.sender, day[:8] + "01")
        if not rows:
            return "You have not used any agent this month."
        totals: dict[str, list[int]] = {}
        for row in rows:
            counts = totals.setdefault(row.agent_id, [0, 0, 0, 0])
            counts[2] += row.messages
            counts[3] += row.tokens
            if row.day == day:
                counts[0] += row.messages
                counts[1] += row.tokens
        lines = ["**Your usage** (UTC)", ""]
        for agent_id, (messages, tokens, month_messages, month_tokens) in sorted(totals.items()):
            agent = inv.settings.agents.get(agent_id)
            name = agent.name if agent else agent_id
            lines.append(
                f"- **{name}**: today {messages} messages, {tokens} tokens; "
                f"this month {month_messages} messages, {month_tokens} tokens"
            )
        lines += ["", "Tokens are the agents' servers' counts, estimated where they give none."]
        return "\n".join(lines)
