"""A homeserver that rate-limits the bot (M_LIMIT_EXCEEDED): the bot waits and sends again."""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import quote

from tests.harness.deploy import Deployment
from tests.harness.flows import onboard
from tests.harness.matrix_user import MatrixUser


async def test_rate_limited_replies_are_sent_again(bot: Deployment, make_user: Any) -> None:
    alice = await make_user("alice")
    home = await onboard(alice, bot)
    room = home.rooms["echo"]
    # Synapse's per-user override: from now on the bot may send one event a second.
    account = await asyncio.to_thread(bot.synapse.register, f"admin_{bot.instance_id}", admin=True)
    admin = MatrixUser(bot.synapse.url, account["user_id"], account["access_token"])
    try:
        await admin.request(
            "POST",
            f"/users/{quote(bot.bot_id)}/override_ratelimit",
            {"messages_per_second": 1, "burst_count": 1},
            prefix="/_synapse/admin/v1",
        )
    finally:
        await admin.http.close()

    sent = [await alice.send_text(room, f"limited {i}") for i in range(3)]

    replies = [await alice.wait_for_reply(room, ev, bot.bot_id, timeout=60) for ev in sent]
    assert [r.body.split("\n")[0] for r in replies] == ["limited 0", "limited 1", "limited 2"]
    assert all("(context:" in r.body for r in replies), "each final reply is complete"
    # The waits are the homeserver's retry_after_ms (under a second at one event a second), not
    # the fallback's whole seconds.
    waits = [
        int(ms)
        for ms in re.findall(
            r"Sending to \S+: rate limited; retrying in (\d+) ms", bot.server.log_text()
        )
    ]
    assert waits, "the homeserver never rate-limited the bot"
    assert all(w <= 1000 for w in waits) and any(w != 1000 for w in waits), waits
