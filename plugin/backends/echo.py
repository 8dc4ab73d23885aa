"""The built-in agent: needs nothing, so a fresh install answers with no key or server."""

from __future__ import annotations

from collections.abc import AsyncIterator

from .base import AgentRequest


class EchoBackend:
    async def reply(self, request: AgentRequest) -> AsyncIterator[str]:
        turns = len(request.history) + 1
        size = f"{turns} turn{'s' if turns != 1 else ''}, ~{request.context_tokens} tokens"
        if request.memory:
            size += f", {len(request.memory)} memory entries"
        yield f"{request.text}\n\n(context: {size})"
