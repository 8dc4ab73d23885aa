"""User journeys that many tests share: onboarding, and reading what only the bot or DB holds."""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import quote, unquote

import pytest
from attrs import define

from .deploy import Deployment
from .matrix_user import MatrixError, MatrixUser, Reply

# A part of a long answer that more parts follow.
CONTINUED = "org.agentspaces.continued"

BINDING_TYPE = "org.agentspaces.room"
SPACE_TYPE = "org.agentspaces.space"
ANSWERED_TYPE = "org.agentspaces.answered"
_ROOM_LINK = re.compile(r"https://matrix\.to/#/((?:!|%21)[^?\s)\"<]+)")


@define
class Onboarded:
    space_id: str
    rooms: dict[str, str]  # agent_id -> room_id of the working rooms created at onboarding
    # The plain room (not a DM) in which `!ai start` was sent.
    control_room: str = ""


def room_links(reply: Reply | str) -> list[str]:
    """The room ids of every matrix.to link in a reply, in order.

    maubot turns matrix.to links into pills in the plain body, so the HTML is read first.
    """
    if isinstance(reply, Reply):
        reply = reply.content.get("formatted_body") or reply.body
    # Markdown rendering percent-encodes the "!" of a room id in a link.
    return list(dict.fromkeys(unquote(link) for link in _ROOM_LINK.findall(reply)))


async def onboard(user: MatrixUser, bot: Deployment, timeout: float = 30) -> Onboarded:
    """`!ai start` from a plain room shared with the bot; joins the Space and every room."""
    control = await user.create_room(invite=[bot.bot_id])
    await user.wait_for_membership(control, bot.bot_id, "join", timeout=timeout)
    reply = await user.ask(control, "!ai start", bot.bot_id, timeout=timeout)
    links = room_links(reply)
    assert links, f"`!ai start` gave no Space link: {reply.body!r}"
    assert "did not finish" not in reply.body, f"`!ai start` failed: {reply.body!r}"
    space_id = links[0]
    rooms = await join_space(user, bot, space_id, timeout)
    assert rooms, f"the Space of `!ai start` holds no working room: {reply.body!r}"
    return Onboarded(space_id, rooms, control)


async def join_space(
    user: MatrixUser, bot: Deployment, space_id: str, timeout: float = 30
) -> dict[str, str]:
    """Joins the Space and every working room the bot linked in it: agent_id -> room_id."""
    await user.join(space_id)
    rooms: dict[str, str] = {}
    for room_id in await space_children(user, space_id):
        await user.join(room_id)
        binding = await bot_account_data(bot, room_id, BINDING_TYPE)
        assert binding is not None, f"working room {room_id} has no binding"
        rooms[binding["agent_id"]] = room_id
    await asyncio.gather(
        *(
            user.wait_for_membership(room_id, user.user_id, "join", timeout=timeout)
            for room_id in [space_id, *rooms.values()]
        )
    )
    return rooms


async def agent_room(
    user: MatrixUser, bot: Deployment, agent: dict[str, Any], config: dict[str, Any] | None = None
) -> str:
    """Makes `agent` the bot's only (and default) agent, with `config` besides, onboards the
    user, and returns the agent's working room."""
    await bot.update_config({"agents": [agent], "default_agent": agent["id"], **(config or {})})
    return (await onboard(user, bot)).rooms[agent["id"]]


async def answers(user: MatrixUser, room_id: str, event_id: str, bot: Deployment) -> list[Reply]:
    """The bot's replies to one message, edits applied; all final once it is answered."""

    def complete() -> list[Reply] | None:
        replies = user.replies_to(room_id, event_id, bot.bot_id)
        done = replies and all(r.final for r in replies) and not replies[-1].content.get(CONTINUED)
        return replies if done else None

    return await user.wait_for(complete, 60, f"the answer to {event_id}")


async def answered_once_in_order(
    user: MatrixUser, room_id: str, event_ids: list[str], bot: Deployment
) -> list[Reply]:
    """Each message's one answer, in the order of `event_ids`, checked to have come in that
    order."""
    replies = []
    for event_id in event_ids:
        (reply,) = await answers(user, room_id, event_id, bot)
        replies.append(reply)
    timeline = [e["event_id"] for e in user.events(room_id, "m.room.message", bot.bot_id)]
    order = [reply.event_id for reply in replies]
    assert sorted(order, key=timeline.index) == order, "answered in the order they were sent"
    return replies


async def space_children(user: MatrixUser, space_id: str) -> list[str]:
    """The Space's children as the user sees them: links the bot sent, with content."""
    state = await user.full_state(space_id)
    return [
        ev["state_key"]
        for ev in state
        if ev["type"] == "m.space.child" and ev["content"] and ev["sender"] == bot_of(state)
    ]


def bot_of(state: list[dict[str, Any]]) -> str:
    (create,) = [ev for ev in state if ev["type"] == "m.room.create"]
    return create["sender"]


async def bot_account_data(bot: Deployment, room_id: str, type: str) -> dict[str, Any] | None:
    """The bot's private room account data, read with the bot's own token."""
    assert bot.bot_token, "the Deployment has no bot_token"
    view = MatrixUser(bot.synapse.url, bot.bot_id, bot.bot_token)
    try:
        path = f"/user/{quote(bot.bot_id)}/rooms/{quote(room_id)}/account_data/{type}"
        return await view.request("GET", path)
    except MatrixError as e:
        if e.status == 404:
            return None
        raise
    finally:
        await view.http.close()


def plugin_db_url(bot: Deployment, db_kind: str, request: pytest.FixtureRequest) -> tuple[str, Any]:
    """SQLAlchemy URL and schema of the instance's own database."""
    if db_kind == "postgres":
        url = request.getfixturevalue("postgres_url")
        return url.replace("postgresql://", "postgresql+psycopg2://"), f"mbp_{bot.instance_id}"
    return f"sqlite:///{bot.server.plugin_db_dir / (bot.instance_id + '.db')}", None


async def delete_plugin_database(
    bot: Deployment, db_kind: str, request: pytest.FixtureRequest
) -> None:
    """Deletes the instance's own database, as an operator may (maubot stopped): Matrix holds
    the truth, and the next start rebuilds it."""
    if db_kind == "postgres":
        import psycopg2

        conn = psycopg2.connect(request.getfixturevalue("postgres_url"))
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP SCHEMA "mbp_{bot.instance_id}" CASCADE')
        conn.close()
    else:
        for path in bot.server.plugin_db_dir.glob(f"{bot.instance_id}.db*"):
            path.unlink()


async def db_rows(
    bot: Deployment, db_kind: str, request: pytest.FixtureRequest, table: str
) -> list[dict[str, Any]]:
    """Every row of one plugin table, read independently of the plugin."""
    from sqlalchemy import MetaData, Table, create_engine, select

    url, schema = plugin_db_url(bot, db_kind, request)

    def read() -> list[dict[str, Any]]:
        engine = create_engine(url)
        try:
            table_ = Table(table, MetaData(), schema=schema, autoload_with=engine)
            with engine.connect() as conn:
                return [dict(row._mapping) for row in conn.execute(select(table_))]
        finally:
            engine.dispose()

    return await asyncio.to_thread(read)


async def wipe_and_restart(bot: Deployment, db_kind: str, request: pytest.FixtureRequest) -> None:
    """Stops maubot, deletes the plugin database, and starts again: all is rebuilt from Matrix."""
    await bot.stop()
    await delete_plugin_database(bot, db_kind, request)
    await bot.start()


async def metrics_text(bot: Deployment) -> str:
    """The instance's /metrics page, read with its web token as Prometheus would."""
    import aiohttp
    from ruamel.yaml import YAML

    token = YAML(typ="safe").load((await bot.instance())["config"])["web"]["token"]
    url = f"{bot.server.url}/_matrix/maubot/plugin/{bot.instance_id}/metrics"
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        assert resp.status == 200, f"/metrics answered {resp.status}"
        return await resp.text()


def event_content(user: MatrixUser, room_id: str, event_id: str) -> dict[str, Any]:
    """The content an event was sent with (before any edit), as the user's sync saw it."""
    for event in user.events(room_id):
        if event["event_id"] == event_id:
            return event.get("content") or {}
    raise AssertionError(f"{event_id} is not in {user.user_id}'s timeline of {room_id}")
