"""The built-in agent: needs nothing, so a fresh install answers with no key or server."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from .base import AgentRequest

# Echo streams its answer a word at a time, like a model does, so that a fresh install shows
# what a streamed reply looks like.
WORD_DELAY = 0.05
_WORDS = re.compile(r"\S+\s*|\s+")


class EchoBackend:
    async def reply(self, request: AgentRequest) -> AsyncIterator[str]:
        turns = len(request.history) + 1
        size = f"{turns} turn{'s' if turns != 1 else ''}, ~{request.context_tokens} tokens"
        if request.memory:
            size += f", {len(request.memory)} memory entries"
        for index, word in enumerate(_WORDS.findall(f"{request.text}\n\n(context: {size})")):
            if index:
                await asyncio.sleep(WORD_DELAY)
            yield word
