"""Plugin lifecycle: reconciliation completes before maubot registers the plugin's handlers."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest
from maubot.loader import PluginMeta
from maubot.standalone.loader import FileSystemLoader
from maubot.testing.bot import TestBot as MockBot
from mautrix.types import EventType
from mautrix.util.async_db import Database
from mautrix.util.config import RecursiveDict
from mautrix.util.logging import TraceLogger
from ruamel.yaml import YAML

from plugin.bot import AgentSpacesBot
from plugin.catchup import CatchUp
from plugin.config import Config
from plugin.migrations import upgrade_table
from plugin.reconcile import Reconciler, ReconcileReport

ROOT = Path(__file__).resolve().parents[2]


async def make_plugin(
    tmp_path: Path, overrides: dict | None = None
) -> tuple[AgentSpacesBot, Database]:
    yaml = YAML()
    base = RecursiveDict(yaml.load((ROOT / "base-config.yaml").read_text()))
    user = base.clone()
    for key, value in (overrides or {}).items():
        user[key] = value
    config = Config(lambda: user._data, lambda: base.clone(), lambda _: None)
    db = Database.create(
        f"sqlite:{tmp_path / 'plugin.db'}", upgrade_table=upgrade_table, log=logging.getLogger("db")
    )
    await db.start()
    bot = MockBot(mxid="@bot:hs")
    meta = PluginMeta.deserialize(yaml.load((ROOT / "maubot.yaml").read_text()))
    http = aiohttp.ClientSession()
    plugin = AgentSpacesBot(
        client=bot.client,
        loop=asyncio.get_running_loop(),
        http=http,
        instance_id="lifecycle",
        log=TraceLogger("test"),
        config=config,
        database=db,
        webapp=None,
        webapp_url=None,
        loader=FileSystemLoader(ROOT, meta),
    )
    return plugin, db


def message_handlers(plugin: AgentSpacesBot) -> int:
    return len(plugin.client.event_handlers.get(EventType.ROOM_MESSAGE, []))


@pytest.fixture
def no_catch_up(monkeypatch: pytest.MonkeyPatch) -> None:
    async def run(self: CatchUp) -> None:
        return None

    monkeypatch.setattr(CatchUp, "run", run)


async def test_reconciliation_runs_before_handlers_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_catch_up: None
) -> None:
    seen: list[int] = []

    async def run(self: Reconciler) -> ReconcileReport:
        seen.append(message_handlers(plugin))
        return ReconcileReport(finished=True)

    monkeypatch.setattr(Reconciler, "run", run)
    plugin, db = await make_plugin(tmp_path)
    assert message_handlers(plugin) == 0
    await plugin.internal_start()
    try:
        assert seen == [0], "reconciliation must run, and finish, before handlers exist"
        assert message_handlers(plugin) > 0
        assert plugin.last_report is not None and plugin.last_report.finished
    finally:
        await plugin.internal_stop()
        await plugin.http.close()
        await db.stop()


async def test_slow_reconciliation_starts_handlers_after_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_catch_up: None
) -> None:
    release = asyncio.Event()

    async def run(self: Reconciler) -> ReconcileReport:
        await release.wait()
        return ReconcileReport(finished=True)

    monkeypatch.setattr(Reconciler, "run", run)
    plugin, db = await make_plugin(tmp_path, {"reconcile.timeout": 1})
    try:
        await asyncio.wait_for(plugin.internal_start(), 5)
        assert message_handlers(plugin) > 0
        assert plugin.last_report is None
        release.set()
        await asyncio.wait_for(plugin._reconcile_task, 5)
        assert plugin.last_report is not None and plugin.last_report.finished
    finally:
        await plugin.internal_stop()
        await plugin.http.close()
        await db.stop()
