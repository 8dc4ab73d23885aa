"""MatrixSender against a homeserver stand-in on loopback: the rate limit's wait is kept."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from mautrix.client import Client
from mautrix.errors import MForbidden
from mautrix.types import UserID

from plugin.matrix_send import MatrixSender, RateLimited


@pytest.fixture
async def homeserver() -> AsyncIterator[tuple[str, list[web.Response]]]:
    answers: list[web.Response] = []

    async def send(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer secret-token"
        assert request.match_info["room"] == "!room:hs"
        assert (await request.json())["body"] == "hi"
        return answers.pop(0)

    app = web.Application()
    app.router.add_put("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}", send)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", answers
    await runner.cleanup()


async def test_rate_limit_names_its_wait_then_the_send_goes_through(homeserver: Any) -> None:
    url, answers = homeserver
    client = Client(mxid=UserID("@bot:hs"), base_url=url, token="secret-token")
    sender = MatrixSender(client)  # type: ignore[arg-type]
    answers.append(
        web.json_response(
            {"errcode": "M_LIMIT_EXCEEDED", "error": "Too many", "retry_after_ms": 1234},
            status=429,
        )
    )
    answers.append(web.json_response({"event_id": "$sent"}))
    answers.append(web.json_response({"errcode": "M_FORBIDDEN", "error": "no"}, status=403))
    try:
        with pytest.raises(RateLimited) as limited:
            await sender.send("!room:hs", {"msgtype": "m.text", "body": "hi"})
        assert limited.value.retry_after_ms == 1234
        assert await sender.send("!room:hs", {"msgtype": "m.text", "body": "hi"}) == "$sent"
        with pytest.raises(MForbidden):
            await sender.send("!room:hs", {"msgtype": "m.text", "body": "hi"})
    finally:
        await client.api.session.close()
