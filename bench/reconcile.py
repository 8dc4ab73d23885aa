"""Reconciliation benchmarks.

1. 10,000 users x 6 rooms (plus each user's answered direct chat) against a synthetic homeserver
   on loopback: wall time, HTTP requests, DB transactions (target: <= 10 s, <= 1 request per
   1,000 rooms, <= 10 transactions).
2. 1,000 rooms on a real Synapse (target: <= 5 s): the simplified sliding sync discovery the
   plugin uses, against its fallback (one filtered full-state /sync, for servers without sliding
   sync) and against one request per room.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from mautrix.client import Client
from mautrix.errors import MNotFound, MUnrecognized
from mautrix.types import UserID
from mautrix.util.async_db import Database

from plugin.db import Store
from plugin.db.migrations import upgrade_table
from plugin.matrix.binding import ANSWERED_TYPE, BINDING_TYPE, SPACE_TYPE, new_chat_id
from plugin.matrix.links import SpaceLinks
from plugin.matrix.outbox import HttpTransport, Outbox
from plugin.matrix.record import MatrixRecord
from plugin.ops.metrics import Metrics
from plugin.startup.discover import SLIDING_SYNC_PATH
from plugin.startup.reconcile import Reconciler

BOT = "@bot:bench"
log = logging.getLogger("bench")


async def no_invites(room_id: str, inviter: str, is_direct: bool, encrypted: bool) -> None:
    raise AssertionError("the benchmark has no invites")


def _state(type: str, key: str, content: dict[str, Any], sender: str = BOT) -> dict[str, Any]:
    return {
        "type": type,
        "state_key": key,
        "sender": sender,
        "content": content,
        "origin_server_ts": 1_700_000_000_000,
        "event_id": f"${type}{key}",
    }


def synthetic_sliding_sync(users: int, rooms_per_user: int) -> bytes:
    """The simplified sliding sync answer of a homeserver holding the plugin's rooms."""
    rooms: dict[str, Any] = {}
    account_data: dict[str, list[dict[str, Any]]] = {}

    def room(room_id: str, state: list[dict[str, Any]], type: str, content: dict) -> None:
        rooms[room_id] = {"initial": True, "required_state": state}
        account_data[room_id] = [{"type": type, "content": content}]

    for u in range(users):
        owner = f"@user{u}:bench"
        space = f"!space{u}:bench"
        children = [f"!room{u}_{r}:bench" for r in range(rooms_per_user)]
        space_state = [
            _state("m.room.create", "", {"type": "m.space"}),
            _state("m.room.name", "", {"name": f"user{u} · Agents"}),
        ]
        space_state += [_state("m.space.child", c, {"via": ["bench"]}) for c in children]
        room(space, space_state, SPACE_TYPE, {"owner": owner, "version": 1})
        # The direct chat the user onboarded from: someone else's room, answered long ago.
        dm_state = [_state("m.room.create", "", {}, sender=owner)]
        room(f"!dm{u}:bench", dm_state, ANSWERED_TYPE, {"inviter": owner})
        for r, room_id in enumerate(children):
            binding = {
                "owner": owner,
                "space_id": space,
                "agent_id": "echo",
                "chat_id": new_chat_id(),
                "context_start": None,
                "share_memory": True,
                "version": 1,
            }
            state = [
                _state("m.room.create", "", {}),
                _state("m.room.name", "", {"name": f"Echo {r}"}),
                _state("m.space.parent", space, {"via": ["bench"], "canonical": True}),
            ]
            room(room_id, state, BINDING_TYPE, binding)
    answer = {"pos": "1", "rooms": rooms, "extensions": {"account_data": {"rooms": account_data}}}
    return json.dumps(answer).encode()


class TransactionCounter:
    """Counts a database's transactions: each statement outside an explicit one, and each
    acquired block."""

    def __init__(self, db: Database) -> None:
        self.transactions = 0
        for name in ("execute", "executemany", "fetch", "fetchrow", "fetchval", "acquire"):
            setattr(db, name, self._counted(getattr(db, name)))

    def _counted(self, method: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.transactions += 1
            return method(*args, **kwargs)

        return counted


def reconciler_for(client: Client, store: Store) -> Reconciler:
    """The plugin's reconciler on a plain mautrix client, as the plugin builds it."""
    outbox = Outbox(client, HttpTransport(client), Metrics(), log)  # type: ignore[arg-type]
    links = SpaceLinks(outbox, client.mxid.split(":", 1)[1])
    record = MatrixRecord(client)  # type: ignore[arg-type]
    return Reconciler(client, store, record, links, log, no_invites)  # type: ignore[arg-type]


async def bench_synthetic(users: int = 10_000, rooms_per_user: int = 6) -> dict[str, Any]:
    body = synthetic_sliding_sync(users, rooms_per_user)
    requests = 0

    async def sync(request: web.Request) -> web.Response:
        nonlocal requests
        requests += 1
        return web.Response(body=body, content_type="application/json")

    async def other(request: web.Request) -> web.Response:
        nonlocal requests
        requests += 1
        return web.json_response({})

    app = web.Application()
    app.router.add_post(SLIDING_SYNC_PATH, sync)
    app.router.add_route("*", "/{tail:.*}", other)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    client = Client(mxid=UserID(BOT), base_url=f"http://127.0.0.1:{port}", token="bench")
    results: dict[str, Any] = {"rooms": users * rooms_per_user, "sync_bytes": len(body)}
    with tempfile.TemporaryDirectory() as tmp:
        db = Database.create(f"sqlite:{tmp}/bench.db", upgrade_table=upgrade_table, log=log)
        await db.start()
        counting = TransactionCounter(db)
        reconciler = reconciler_for(client, Store(db))
        for run in ("first", "second"):
            requests, counting.transactions = 0, 0
            started = time.perf_counter()
            report = await reconciler.run()
            results[run] = {
                "seconds": round(time.perf_counter() - started, 2),
                "http_requests": requests,
                "db_transactions": counting.transactions,
                "report": report.summary(),
            }
        await db.stop()
    await client.api.session.close()
    await runner.cleanup()
    return results


async def bench_real_synapse(rooms: int = 1000) -> dict[str, Any]:
    from tests.harness.matrix_user import MatrixUser
    from tests.harness.synapse import Synapse

    with tempfile.TemporaryDirectory() as tmp:
        synapse = Synapse(Path(tmp) / "synapse")
        synapse.start()
        try:
            account = synapse.register("bot")
            owner = "@owner:localhost"
            bot = MatrixUser(synapse.url, account["user_id"], account["access_token"])
            space = await bot.create_room(
                name="Bench · Agents", creation_content={"type": "m.space"}
            )
            await bot.request(
                "PUT",
                f"/user/{account['user_id']}/rooms/{space}/account_data/{SPACE_TYPE}",
                {"owner": owner, "version": 1},
            )
            semaphore = asyncio.Semaphore(4)

            async def make_room(i: int) -> None:
                async with semaphore:
                    room = await bot.create_room(
                        name=f"Echo {i}",
                        initial_state=[
                            {
                                "type": "m.space.parent",
                                "state_key": space,
                                "content": {"via": ["localhost"], "canonical": True},
                            }
                        ],
                    )
                    binding = {
                        "owner": owner,
                        "space_id": space,
                        "agent_id": "echo",
                        "chat_id": new_chat_id(),
                        "version": 1,
                    }
                    await bot.request(
                        "PUT",
                        f"/user/{account['user_id']}/rooms/{room}/account_data/{BINDING_TYPE}",
                        binding,
                    )
                    await bot.send_state(
                        space, "m.space.child", {"via": ["localhost"]}, state_key=room
                    )

            started = time.perf_counter()
            await asyncio.gather(*(make_room(i) for i in range(rooms)))
            setup_seconds = time.perf_counter() - started
            await bot.http.close()

            results: dict[str, Any] = {"rooms": rooms, "setup_seconds": round(setup_seconds, 1)}
            db = Database.create(f"sqlite:{tmp}/bench.db", upgrade_table=upgrade_table, log=log)
            await db.start()
            # Each strategy is measured against a freshly started Synapse (cold caches), as at a
            # plugin start after a server restart, and then once more warm.
            for strategy in ("sliding_sync", "sync", "per_room"):
                synapse.stop()
                synapse.start()
                client = Client(
                    mxid=UserID(account["user_id"]),
                    base_url=synapse.url,
                    token=account["access_token"],
                )
                if strategy == "sync":
                    without_sliding_sync(client)
                reconciler = reconciler_for(client, Store(db))
                for temperature in ("cold", "warm"):
                    started = time.perf_counter()
                    if strategy == "per_room":
                        found = f"rooms with a record: {await per_room_discovery(client)}"
                    else:
                        found = (await reconciler.run()).summary()
                    results[f"{strategy}_{temperature}"] = {
                        "seconds": round(time.perf_counter() - started, 2),
                        "result": found,
                    }
                await client.api.session.close()
            await db.stop()
        finally:
            synapse.stop()
    return results


def without_sliding_sync(client: Client) -> None:
    """Makes the client's server answer sliding sync as one without it would: the /sync path."""
    request = client.api.request

    async def no_sliding_sync(method: Any, path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path) == SLIDING_SYNC_PATH:
            raise MUnrecognized(404, "Unrecognized request")
        return await request(method, path, *args, **kwargs)

    client.api.request = no_sliding_sync  # type: ignore[method-assign]


async def per_room_discovery(client: Client) -> int:
    """The alternative the plugin does not use: joined rooms, then account data and state
    of each room."""
    record = MatrixRecord(client)  # type: ignore[arg-type]
    semaphore = asyncio.Semaphore(8)
    found = 0

    async def one(room_id: str) -> None:
        nonlocal found
        async with semaphore:
            binding = await record.read_binding(room_id)
            try:
                space = await client.get_account_data(SPACE_TYPE, room_id=room_id)
            except MNotFound:
                space = None
            if binding or space:
                found += 1
            await client.get_state(room_id)

    await asyncio.gather(*(one(r) for r in await client.get_joined_rooms()))
    return found


def main() -> None:
    print("== Reconciliation: 10,000 users x (6 rooms + 1 direct chat), synthetic homeserver")
    print(json.dumps(asyncio.run(bench_synthetic()), indent=2))
    print("== Reconciliation: 1,000 rooms on a real Synapse")
    print(json.dumps(asyncio.run(bench_real_synapse()), indent=2))


if __name__ == "__main__":
    main()
