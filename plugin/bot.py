"""The maubot Plugin class: wiring only. Each capability lives in its own module."""

from __future__ import annotations

import asyncio

from aiohttp import web as aiohttp_web
from maubot import MessageEvent, Plugin
from maubot.handlers import command, event, web
from mautrix.types import EventType, StateEvent
from mautrix.util.async_db import UpgradeTable
from mautrix.util.config import BaseProxyConfig

from . import admin_commands, context_commands, room_commands
from . import web as web_pages
from .catchup import CatchUp
from .commands import CommandRouter
from .config import Config, Settings
from .context import ContextManager
from .db import Store
from .dispatch import Dispatcher
from .live_config import LiveConfig
from .matrix_state import MatrixRecord
from .membership import MembershipHandler
from .metrics import Metrics
from .migrations import upgrade_table
from .quota import Quota
from .reconcile import Reconciler, ReconcileReport
from .spaces import Spaces


class AgentSpacesBot(Plugin):
    settings: Settings
    store: Store
    router: CommandRouter
    record: MatrixRecord
    metrics: Metrics
    live_config: LiveConfig
    reconciler: Reconciler
    last_report: ReconcileReport | None
    _reconcile_task: asyncio.Task[ReconcileReport | None]
    _catch_up_task: asyncio.Task[None] | None
    spaces: Spaces
    membership: MembershipHandler
    dispatcher: Dispatcher

    @classmethod
    def get_config_class(cls) -> type[BaseProxyConfig]:
        return Config

    @classmethod
    def get_db_upgrade_table(cls) -> UpgradeTable:
        return upgrade_table

    async def pre_start(self) -> None:
        self.metrics = Metrics()
        self.live_config = LiveConfig(self.config, self.server_name, self.log, self.metrics)
        self.settings = self.live_config.at_start()
        self.store = Store(self.database)
        self.record = MatrixRecord(self.client)
        self.router = CommandRouter(self.store, lambda: self.settings)
        self.spaces = Spaces(self.client, self.store, self.record, lambda: self.settings, self.log)
        room_commands.register(self.router, self.spaces)
        self.membership = MembershipHandler(
            self.client, self.store, self.spaces, self.record, lambda: self.settings, self.log
        )
        self.reconciler = Reconciler(
            self.client, self.store, self.record, self.log, self.membership.handle_invite
        )
        admin_commands.register(self.router, lambda: self.last_report, self.reconcile)
        context = ContextManager(self.store, self.record)
        self.dispatcher = Dispatcher(
            client=self.client,
            store=self.store,
            context=context,
            quota=Quota(self.store, lambda: self.settings),
            metrics=self.metrics,
            settings=lambda: self.settings,
            http=self.http,
            log=self.log.getChild("dispatch"),
        )
        context_commands.register(self.router, self.store, context, self.dispatcher)
        self.last_report = None
        self._catch_up_task = None
        # Reconciliation runs before maubot registers the handlers, so that they route with the
        # state Matrix holds. Past the time budget the handlers start anyway.
        self._reconcile_task = asyncio.create_task(self.reconcile())
        try:
            await asyncio.wait_for(
                asyncio.shield(self._reconcile_task), self.settings.reconcile_timeout
            )
        except asyncio.TimeoutError:
            self.log.warning(
                f"Reconciliation takes longer than {self.settings.reconcile_timeout} s; "
                "starting the handlers, it completes in the background"
            )

    async def start(self) -> None:
        self.dispatcher.start()
        self._catch_up_task = asyncio.create_task(self._catch_up())
        self.log.info("Agent Spaces started")

    async def stop(self) -> None:
        for task in (self._reconcile_task, self._catch_up_task):
            if task is not None and not task.done():
                task.cancel()
        await self.dispatcher.stop()

    async def reconcile(self) -> ReconcileReport | None:
        try:
            report = await self.reconciler.run()
        except Exception as e:
            self.log.exception("Reconciliation failed; routing with the cached state")
            self.metrics.error("reconcile", str(e))
            return None
        self.last_report = report
        self.metrics.reconciled(report.duration, report.counts())
        self.log.info(report.summary())
        return report

    async def _catch_up(self) -> None:
        # Catch-up answers from the reconciled state, so it waits for a slow reconciliation.
        await self._reconcile_task
        catch_up = CatchUp(
            self.client, self.store, lambda: self.settings, self.dispatcher.submit, self.log
        )
        try:
            await catch_up.run()
        except Exception as e:
            self.log.exception("Catch-up failed")
            self.metrics.error("catch_up", str(e))

    @property
    def server_name(self) -> str:
        return self.client.mxid.split(":", 1)[1]

    def on_external_config_update(self) -> None:
        self.settings = self.live_config.changed(self.settings)

    @web.get("/status")
    async def status_page(self, request: aiohttp_web.Request) -> aiohttp_web.Response:
        return await web_pages.status_page(self, request)

    @web.get("/metrics")
    async def metrics_page(self, request: aiohttp_web.Request) -> aiohttp_web.Response:
        return await web_pages.metrics_page(self, request)

    @event.on(EventType.ROOM_MEMBER)
    async def on_member(self, evt: StateEvent) -> None:
        await self.membership.on_member(evt)

    @event.on(EventType.ROOM_MESSAGE)
    async def on_message(self, evt: MessageEvent) -> None:
        await self.dispatcher.on_message(evt)

    @event.on(EventType.ROOM_NAME)
    async def on_room_name(self, evt: StateEvent) -> None:
        if evt.sender != self.client.mxid:
            await self.spaces.title_changed(evt.room_id, evt.content.name or "")

    @command.new(
        name=lambda self: self.settings.command_prefix,
        require_subcommand=False,
        arg_fallthrough=False,
    )
    @command.argument("args", pass_raw=True, required=False)
    async def ai(self, evt: MessageEvent, args: str) -> None:
        await self.router.handle(evt, args)
