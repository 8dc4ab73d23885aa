"""The agent registry: which backend object serves an agent's settings."""

from __future__ import annotations

import aiohttp

from ..config import AgentSettings
from .base import Backend
from .echo import EchoBackend
from .http import HttpBackend
from .openai import OpenAIBackend


def backend_for(agent: AgentSettings, http: aiohttp.ClientSession) -> Backend:
    if agent.backend == "openai":
        return OpenAIBackend(http)
    if agent.backend == "http":
        return HttpBackend(http)
    if agent.backend == "echo":
        return EchoBackend()
    # Config validation only lets the known backends through.
    raise ValueError(f"unknown backend {agent.backend!r}")
