"""The outbox, the one sender: the rate limit's wait is kept and waited out, a retry reuses its
transaction, encrypted rooms get encrypted events, and its failures are Matrix errors."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from mautrix.api import Method, Path
from mautrix.client import Client
from mautrix.errors import MatrixRequestError, MForbidden
from mautrix.types import UserID

from plugin.matrix.outbox import (
    MAX_RETRY_MS,
    REACTION,
    SEND_TRIES,
    HttpTransport,
    Outbox,
    RateLimited,
    retry_delay_ms,
)
from plugin.matrix.replies import ReplyTarget
from plugin.ops.metrics import Metrics
from tests.fakes.matrix import FakeMatrix, FakeRoom

ROOM = "!room:example.org"
HI = {"msgtype": "m.text", "body": "hi"}


def outbox_of(fake: FakeMatrix) -> Outbox:
    return Outbox(fake, fake, Metrics(), logging.getLogger("test.outbox"))  # type: ignore[arg-type]


@asynccontextmanager
async def homeserver(answers: list[web.Response]) -> AsyncIterator[Client]:
    """A client of a homeserver stand-in on loopback that gives the `answers` to sends."""

    async def send(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer secret-token"
        assert request.match_info["room"] == ROOM
        assert (await request.json())["body"] == "hi"
        return answers.pop(0)

    app = web.Application()
    app.router.add_put("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}", send)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = site.name.rstrip("/")
    client = Client(mxid=UserID("@bot:example.org"), base_url=url, token="secret-token")
    try:
        yield client
    finally:
        await client.api.session.close()
        await runner.cleanup()


async def test_the_transport_keeps_the_rate_limits_wait() -> None:
    answers = [
        web.json_response(
            {"errcode": "M_LIMIT_EXCEEDED", "error": "Too many", "retry_after_ms": 1234},
            status=429,
        ),
        web.json_response({"event_id": "$sent"}),
        web.json_response({"errcode": "M_FORBIDDEN", "error": "no"}, status=403),
    ]
    path = Path.v3.rooms[ROOM].send["m.room.message"]["txn1"]
    async with homeserver(answers) as client:
        transport = HttpTransport(client)  # type: ignore[arg-type]
        with pytest.raises(RateLimited) as limited:
            await transport.request(Method.PUT, path, HI)
        assert limited.value.retry_after_ms == 1234
        assert await transport.request(Method.PUT, path, HI) == {"event_id": "$sent"}
        with pytest.raises(MForbidden):
            await transport.request(Method.PUT, path, HI)


def test_a_rate_limit_without_retry_after_backs_off() -> None:
    assert [retry_delay_ms(RateLimited(None), n) for n in (1, 2, 3)] == [1000, 2000, 4000]
    assert retry_delay_ms(RateLimited(250), 3) == 250
    assert retry_delay_ms(RateLimited(10**9), 1) == MAX_RETRY_MS


async def test_a_rate_limited_send_is_retried_in_the_same_transaction(fake: FakeMatrix) -> None:
    outbox = outbox_of(fake)
    fake.rate_limited, fake.retry_after_ms = 2, 0

    event_id = await outbox.send(ROOM, HI)

    assert fake.rate_limit_hits == 2
    assert len(fake.requests) == 3 and len(set(fake.requests)) == 1, "one transaction id"
    (sent,) = fake.sent
    assert (sent.event_id, sent.content) == (event_id, HI)
    assert outbox.metrics.messages_out == 1


async def test_a_send_limited_at_every_try_fails_as_a_matrix_error(fake: FakeMatrix) -> None:
    outbox = outbox_of(fake)
    fake.rate_limited, fake.retry_after_ms = SEND_TRIES, 0

    with pytest.raises(MatrixRequestError) as failed:
        await outbox.send(ROOM, HI)

    assert failed.value.errcode == "M_LIMIT_EXCEEDED"
    assert fake.sent == [] and outbox.metrics.messages_out == 0


async def test_replies_notices_and_edits(fake: FakeMatrix) -> None:
    outbox = outbox_of(fake)

    await outbox.reply(ReplyTarget(ROOM, "$question", thread_root="$root"), "**done**")
    await outbox.notice(ROOM, "plain")
    edit = {"msgtype": "m.text", "body": "* x", "m.new_content": {"msgtype": "m.text", "body": "x"}}
    await outbox.send(ROOM, edit)

    reply, notice, _ = (s.content for s in fake.messages(ROOM))
    assert reply["msgtype"] == "m.notice"
    assert reply["formatted_body"] == "<p><strong>done</strong></p>"
    assert reply["m.relates_to"] == {
        "rel_type": "m.thread",
        "event_id": "$root",
        "is_falling_back": False,
        "m.in_reply_to": {"event_id": "$question"},
    }
    assert notice == {"msgtype": "m.notice", "body": "plain"}
    assert outbox.metrics.messages_out == 2, "an edit is not a message of its own"


async def test_encrypted_rooms_get_encrypted_events(fake: FakeMatrix) -> None:
    outbox = outbox_of(fake)
    fake.crypto = object()
    fake.rooms[ROOM] = FakeRoom(state={("m.room.encryption", ""): {"algorithm": "megolm"}})
    fake.rooms["!plain:example.org"] = FakeRoom()
    reaction: dict[str, Any] = {
        "m.relates_to": {"rel_type": "m.annotation", "event_id": "$e", "key": "👍"}
    }

    await outbox.send(ROOM, HI)
    await outbox.send(ROOM, reaction, REACTION)
    await outbox.send("!plain:example.org", HI)

    encrypted, plain_reaction, plain = fake.sent
    assert encrypted.type == "m.room.encrypted"
    assert json.loads(encrypted.content["ciphertext"]) == {"type": "m.room.message", "content": HI}
    assert (plain_reaction.type, plain_reaction.content) == (REACTION, reaction)
    assert (plain.type, plain.content) == ("m.room.message", HI)
