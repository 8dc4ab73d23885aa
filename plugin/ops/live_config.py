"""The config's life in a running instance: validated at start and on every admin UI change.

A change with an error is rejected: the log names each bad key (never a secret's value), the
instance keeps its last valid settings, and the stored config text goes back to the last valid
one, so that a restart runs on it too rather than on the rejected text.

maubot does not validate a config edited while an instance was stopped, so the plugin keeps the
last config it accepted in its own database, and a start on an invalid config runs on that one.
With none at all, it serves admins only: it fails closed, never open.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

import attrs
from attrs import define, field

from ..db.tables import StateTable
from .config import Config, ConfigError, load_settings, parse_settings
from .metrics import Metrics
from .settings import Settings

LAST_VALID_KEY = "last_valid_config"


@define(eq=False)
class LiveConfig:
    config: Config
    server: str
    state: StateTable
    log: logging.Logger
    metrics: Metrics
    # Whether the bot's client can encrypt: `rooms.encrypt: always` needs it.
    crypto: Callable[[], bool]
    # The raw data of the config last accepted, restored when a change is rejected.
    _valid_data: Any = field(init=False, default=None)
    # What the status page says about the config the instance runs on.
    status: str = field(init=False, default="valid")

    async def at_start(self) -> Settings:
        try:
            settings = load_settings(self.config, self.server, self.crypto())
        except ConfigError as e:
            return await self._fail_closed(e.problems)
        if not settings.web_token:
            # Generated once and saved, so that the operator can read it in the admin UI.
            settings = attrs.evolve(settings, web_token=secrets.token_urlsafe(24))
        return await self._accept(settings)

    async def changed(self, current: Settings) -> Settings:
        """The settings after an admin UI change: the new ones, or `current` if it is invalid."""
        try:
            settings = load_settings(self.config, self.server, self.crypto())
        except ConfigError as e:
            self._report("Config change rejected, keeping the last valid config", e.problems)
            self._restore()
            return current
        except Exception as e:
            # Only the type: an unexpected error's text could quote a value.
            self._report(
                "Config change rejected, keeping the last valid config",
                [f"config: {type(e).__name__} while reading it"],
            )
            self._restore()
            return current
        if not settings.web_token:
            # An edit that empties the token keeps the one the status page already uses.
            settings = attrs.evolve(settings, web_token=current.web_token)
        settings = await self._accept(settings)
        self.log.info("Config updated")
        return settings

    async def _fail_closed(self, problems: list[str]) -> Settings:
        saved = await self.state.get(LAST_VALID_KEY)
        if saved is not None:
            try:
                settings = parse_settings(json.loads(saved), self.server, self.crypto())
            except (ConfigError, ValueError):
                self.log.error("The last valid config kept in the database is not valid now")
            else:
                what = "Invalid config at start; running on the last valid config instead"
                # A rejected change later goes back to this one, the config the bot runs on.
                self._valid_data = json.loads(saved)
                self._report(what, problems)
                self.status = f"{what} (fix the config in the admin UI)"
                return settings
        what = "Invalid config at start and no valid config kept; serving admins only"
        self._report(what, problems)
        self.status = f"{what} (fix the config in the admin UI)"
        return self._admins_only()

    def _report(self, what: str, problems: list[str]) -> None:
        for problem in problems:
            self.log.error(f"{what}: {problem}")
            self.metrics.error("config", f"{what}: {problem}")

    async def _accept(self, settings: Settings) -> Settings:
        if self.config["web.token"] != settings.web_token:
            self.config["web.token"] = settings.web_token
        # Saving also writes the defaults of missing keys, as maubot's own handler does.
        self.config.save()
        self._valid_data = self.config._data
        await self.state.set(LAST_VALID_KEY, json.dumps(self._valid_data))
        self.status = "valid"
        return settings

    def _restore(self) -> None:
        if self._valid_data is None:
            self.log.error("No valid config was ever loaded; keeping the current settings")
            return
        self.config._data = self._valid_data
        self.config.save()

    def _admins_only(self) -> Settings:
        """The defaults, with nobody allowed but the admins that the stored config names."""
        base = self.config.load_base()
        defaults: dict[str, Any] = dict(base._data) if base else {}
        data = self.config._data if isinstance(self.config._data, dict) else {}
        access = data.get("access")
        admins = access.get("admins") if isinstance(access, dict) else None
        try:
            settings = parse_settings(
                {**defaults, "access": {"allowed": [], "admins": admins}}, self.server
            )
        except ConfigError:
            settings = parse_settings(
                {**defaults, "access": {"allowed": [], "admins": []}}, self.server
            )
        # Its token still opens the status page, which shows what is wrong.
        web = data.get("web")
        token = web.get("token") if isinstance(web, dict) else None
        if not isinstance(token, str) or not token:
            token = secrets.token_urlsafe(24)
        return attrs.evolve(settings, web_token=token)
