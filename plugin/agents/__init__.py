"""The agent registry: which backend serves an agent, and finding an agent by what users call it."""

from __future__ import annotations

import aiohttp

from ..ops.settings import AgentSettings, Settings
from .base import Backend
from .echo import EchoBackend
from .http import HttpBackend
from .openai import OpenAIBackend
from .openai_image import OpenAIImageBackend


def backend_for(agent: AgentSettings, http: aiohttp.ClientSession) -> Backend:
    if agent.backend == "openai":
        return OpenAIBackend(http)
    if agent.backend == "http":
        return HttpBackend(http)
    if agent.backend == "openai_image":
        return OpenAIImageBackend(http)
    if agent.backend == "echo":
        return EchoBackend()
    # Config validation only lets the known backends through.
    raise ValueError(f"unknown backend {agent.backend!r}")


def find_agent(settings: Settings, word: str) -> AgentSettings | None:
    """An agent by id, or else by its display name; both case-insensitive."""
    word = word.strip().lower()
    for agent in settings.agents.values():
        if agent.id.lower() == word:
            return agent
    for agent in settings.agents.values():
        if agent.name.lower() == word:
            return agent
    return None
