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
    space_id = links[0]
    return Onboarded(space_id, await join_space(user, bot, space_id, timeout), control)


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


async def delete_plugin_database(
    bot: Deployment, db_kind: str, request: pytest.FixtureRequest
) -> None:
    """Deletes the instance's own database (maubot stopped): a backup-less restore."""
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
