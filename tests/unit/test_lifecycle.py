"""Plugin lifecycle: reconciliation completes before maubot registers the plugin's handlers."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from maubot.loader import PluginMeta
from maubot.standalone.loader import FileSystemLoader
from maubot.testing.bot import TestBot as MockBot
from mautrix.types import EventType
from mautrix.util.config import RecursiveDict
from mautrix.util.logging import TraceLogger
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from plugin.bot import AgentSpacesBot
from plugin.db import Store
from plugin.ops.config import Config
from plugin.startup.catchup import CatchUp, CatchUpReport
from plugin.startup.reconcile import Reconciler, ReconcileReport
from tests.config import ROOT, config_data


def make_plugin(store: Store, overrides: dict[str, Any] | None = None) -> AgentSpacesBot:
    """The real plugin class on maubot's testing client, with the instance's config and DB."""
    config = Config(
        lambda: config_data(overrides),
        lambda: RecursiveDict(config_data(), CommentedMap),
        lambda _: None,
    )
    bot = MockBot(mxid="@bot:example.org")
    meta = PluginMeta.deserialize(YAML().load((ROOT / "maubot.yaml").read_text()))
    return AgentSpacesBot(
        client=bot.client,
        loop=asyncio.get_running_loop(),
        http=aiohttp.ClientSession(),
        instance_id="lifecycle",
        log=TraceLogger("test"),
        config=config,
        database=store.db,
        webapp=None,
        webapp_url=None,
        loader=FileSystemLoader(ROOT, meta),
    )


def message_handlers(plugin: AgentSpacesBot) -> int:
    return len(plugin.client.event_handlers.get(EventType.ROOM_MESSAGE, []))


def skip_catch_up(monkeypatch: pytest.MonkeyPatch) -> None:
    async def run(self: CatchUp) -> CatchUpReport:
        return CatchUpReport()

    monkeypatch.setattr(CatchUp, "run", run)


async def test_reconciliation_runs_before_handlers_exist(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    skip_catch_up(monkeypatch)
    seen: list[int] = []

    async def run(self: Reconciler) -> ReconcileReport:
        seen.append(message_handlers(plugin))
        return ReconcileReport(finished=True)

    monkeypatch.setattr(Reconciler, "run", run)
    plugin = make_plugin(store)
    assert message_handlers(plugin) == 0
    await plugin.internal_start()
    try:
        assert seen == [0], "reconciliation must run, and finish, before handlers exist"
        assert message_handlers(plugin) > 0
        report = plugin.parts.startup.last_report
        assert report is not None and report.finished
    finally:
        await plugin.internal_stop()
        await plugin.http.close()


async def test_slow_reconciliation_starts_handlers_after_the_budget(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    skip_catch_up(monkeypatch)
    release = asyncio.Event()

    async def run(self: Reconciler) -> ReconcileReport:
        await release.wait()
        return ReconcileReport(finished=True)

    monkeypatch.setattr(Reconciler, "run", run)
    plugin = make_plugin(store, {"reconcile.timeout": 1})
    try:
        await asyncio.wait_for(plugin.internal_start(), 5)
        assert message_handlers(plugin) > 0
        assert plugin.parts.startup.last_report is None
        release.set()
        task = plugin.parts.startup._reconcile_task
        assert task is not None
        await asyncio.wait_for(task, 5)
        report = plugin.parts.startup.last_report
        assert report is not None and report.finished
    finally:
        await plugin.internal_stop()
        await plugin.http.close()
