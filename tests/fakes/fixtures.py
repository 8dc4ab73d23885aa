"""Fixtures starting the fake agent servers; import them into a test module to use them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .servers import FakeAgentPlatform, FakeOpenAI


@pytest.fixture
async def openai_server() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def agent_server() -> AsyncIterator[FakeAgentPlatform]:
    server = FakeAgentPlatform()
    await server.start()
    yield server
    await server.stop()
