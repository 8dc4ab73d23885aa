"""The maubot Plugin class: the composition root. It builds the parts (`parts.py`), runs the
start in its order, and routes maubot's events and commands to them."""

from __future__ import annotations

from maubot import MessageEvent, Plugin
from maubot.handlers import command, event
from mautrix.types import EncryptedEvent, EventType, ReactionEvent, StateEvent
from mautrix.util.async_db import UpgradeTable
from mautrix.util.config import BaseProxyConfig

from . import parts
from .db import Store
from .db.migrations import upgrade_table
from .matrix.outbox import HttpTransport
from .ops.config import Config
from .ops.live_config import LiveConfig
from .ops.metrics import Metrics
from .ops.settings import Settings
from .ops.web import StatusPages


class AgentSpacesBot(Plugin):
    settings: Settings
    metrics: Metrics
    live_config: LiveConfig
    parts: parts.Parts

    @classmethod
    def get_config_class(cls) -> type[BaseProxyConfig]:
        return Config

    @classmethod
    def get_db_upgrade_table(cls) -> UpgradeTable:
        return upgrade_table

    async def pre_start(self) -> None:
        self.metrics = Metrics()
        store = Store(self.database)
        self.live_config = LiveConfig(
            self.config, self.server_name, store.state, self.log, self.metrics, self.has_crypto
        )
        self.settings = await self.live_config.at_start()
        self.parts = parts.build(
            self.client,
            HttpTransport(self.client),
            store,
            self.http,
            self.metrics,
            self.current_settings,
            self.log,
        )
        await self.parts.refusals.access_changed(self.settings)
        # Reconciliation runs before maubot registers the handlers, so that they route with the
        # state Matrix holds.
        await self.parts.startup.reconcile_first(self.settings.reconcile_timeout)

    async def start(self) -> None:
        p = self.parts
        self.register_handler_class(
            StatusPages(
                self.client.mxid,
                p.store,
                self.metrics,
                self.current_settings,
                p.queues.depth,
                lambda: p.startup.last_report,
                lambda: self.live_config.status,
                lambda: p.startup.last_catch_up,
            )
        )
        # Each room waits for its catch-up, so that what came while the bot was down is answered
        # before what comes now.
        p.queues.hold_all()
        p.intake.start()
        p.startup.start_catch_up()
        self.log.info("Agent Spaces started")

    async def stop(self) -> None:
        await self.parts.startup.stop()
        await self.parts.intake.stop()

    def current_settings(self) -> Settings:
        return self.settings

    def has_crypto(self) -> bool:
        """maubot gives the client an OlmMachine only with its encryption packages and a device."""
        return self.client.crypto is not None

    @property
    def server_name(self) -> str:
        return self.client.mxid.split(":", 1)[1]

    async def on_external_config_update(self) -> None:
        self.settings = await self.live_config.changed(self.settings)
        await self.parts.refusals.access_changed(self.settings)

    @event.on(EventType.ROOM_MEMBER)
    async def on_member(self, evt: StateEvent) -> None:
        await self.parts.membership.on_member(evt)

    @event.on(EventType.ROOM_MESSAGE)
    async def on_message(self, evt: MessageEvent) -> None:
        await self.parts.intake.on_message(evt)

    @event.on(EventType.ROOM_ENCRYPTED)
    async def on_encrypted(self, evt: EncryptedEvent) -> None:
        # maubot decrypts what it can before on_message; this notices what it could not.
        await self.parts.undecryptable.on_encrypted(evt)

    @event.on(EventType.REACTION)
    async def on_reaction(self, evt: ReactionEvent) -> None:
        await self.parts.reactions.on_reaction(evt)

    @event.on(EventType.STICKER)
    async def on_sticker(self, evt: MessageEvent) -> None:
        # A sticker is an image of its own event type (mautrix gives it the msgtype m.sticker).
        await self.parts.intake.on_message(evt)

    @event.on(EventType.ROOM_NAME)
    async def on_room_name(self, evt: StateEvent) -> None:
        if evt.sender != self.client.mxid:
            await self.parts.rooms.title_changed(evt.room_id, evt.content.name or "")

    @command.new(
        name=lambda self: self.settings.command_prefix,
        require_subcommand=False,
        arg_fallthrough=False,
    )
    @command.argument("args", pass_raw=True, required=False)
    async def ai(self, evt: MessageEvent, args: str) -> None:
        await self.parts.router.handle(evt, args)
