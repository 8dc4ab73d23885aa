"""The maubot Plugin class: wiring only. Each capability lives in its own module."""

from __future__ import annotations

import secrets

import attrs
from maubot import MessageEvent, Plugin
from maubot.handlers import command
from mautrix.util.async_db import UpgradeTable
from mautrix.util.config import BaseProxyConfig

from .commands import CommandRouter
from .config import Config, ConfigError, Settings, parse_settings
from .db import Store
from .matrix_state import MatrixRecord
from .metrics import Metrics
from .migrations import upgrade_table


class AgentSpacesBot(Plugin):
    settings: Settings
    store: Store
    router: CommandRouter
    record: MatrixRecord
    metrics: Metrics

    @classmethod
    def get_config_class(cls) -> type[BaseProxyConfig]:
        return Config

    @classmethod
    def get_db_upgrade_table(cls) -> UpgradeTable:
        return upgrade_table

    async def pre_start(self) -> None:
        self.settings = self._initial_settings()
        self.store = Store(self.database)
        self.record = MatrixRecord(self.client)
        self.metrics = Metrics()
        self.router = CommandRouter(self.store, lambda: self.settings)
        # Reconciliation of the Matrix topology into the database runs here, before maubot
        # registers the handlers.

    async def start(self) -> None:
        self.log.info("Agent Spaces started")

    @property
    def server_name(self) -> str:
        return self.client.mxid.split(":", 1)[1]

    def _initial_settings(self) -> Settings:
        self.config.load_and_update()
        if not self.config["web.token"]:
            # Generated once and saved, so that the operator can read it in the admin UI.
            self.config["web.token"] = secrets.token_urlsafe(24)
            self.config.save()
        try:
            return parse_settings(self.config._data, self.server_name)
        except ConfigError as e:
            for problem in e.problems:
                self.log.error(f"Invalid config, starting with the defaults instead: {problem}")
        defaults = parse_settings(self.config.load_base()._data, self.server_name)
        return attrs.evolve(defaults, web_token=str(self.config["web.token"]))

    def on_external_config_update(self) -> None:
        try:
            self.config.load_and_update()
            self.settings = parse_settings(self.config._data, self.server_name)
        except ConfigError as e:
            for problem in e.problems:
                self.log.error(f"Config change rejected, keeping the last valid config: {problem}")
            return
        except Exception as e:
            self.log.error(f"Config change rejected, keeping the last valid config: {e}")
            return
        self.log.info("Config updated")

    @command.new(
        name=lambda self: self.settings.command_prefix,
        require_subcommand=False,
        arg_fallthrough=False,
    )
    @command.argument("args", pass_raw=True, required=False)
    async def ai(self, evt: MessageEvent, args: str) -> None:
        await self.router.handle(evt, args)
