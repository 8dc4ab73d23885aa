"""The uploaded plugin starts on both plugin databases and answers `!ai help`."""

from __future__ import annotations

import asyncio

from sqlalchemy import create_engine, inspect

from tests.harness.deploy import Deployment

EXPECTED_TABLES = {
    "agent_user",
    "room",
    "context_turn",
    "memory_entry",
    "message",
    "usage",
    "plugin_state",
}


async def test_help_answers(bot: Deployment, make_user, db_kind: str) -> None:
    alice = await make_user("alice")
    room_id = await alice.create_room(invite=[bot.bot_id])
    await alice.wait_for_membership(room_id, bot.bot_id, "join")

    reply = await alice.ask(room_id, "!ai help", bot.bot_id)

    assert "Agent Spaces commands" in reply.body
    assert "!ai help" in reply.body
    info = await bot.instance()
    assert info["started"] is True
    assert info["database_engine"] == db_kind


async def test_tables_live_in_the_instance_database(bot: Deployment, db_kind: str, request) -> None:
    if db_kind == "postgres":
        url = request.getfixturevalue("postgres_url").replace(
            "postgresql://", "postgresql+psycopg2://"
        )
        schema = f"mbp_{bot.instance_id}"
    else:
        url = f"sqlite:///{bot.server.plugin_db_dir / (bot.instance_id + '.db')}"
        schema = None
    engine = create_engine(url)
    try:
        tables = await asyncio.to_thread(
            lambda: set(inspect(engine).get_table_names(schema=schema))
        )
    finally:
        engine.dispose()
    assert EXPECTED_TABLES <= tables
