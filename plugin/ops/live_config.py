"""The config's life in a running instance: validated at start and on every admin UI change.

A change with an error is rejected: the log names each bad key (never a secret's value), the
instance keeps its last valid settings, and the stored config text goes back to the last valid
one, so that a restart runs on it too rather than on the rejected text.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import attrs

from .config import Config, ConfigError, load_settings, parse_settings
from .metrics import Metrics
from .settings import Settings


class LiveConfig:
    def __init__(self, config: Config, server: str, log: logging.Logger, metrics: Metrics) -> None:
        self.config = config
        self.server = server
        self.log = log
        # Rejections also show on the status page, for operators who do not read the log.
        self.metrics = metrics
        # The raw data of the config last accepted, restored when a change is rejected.
        self._valid_data: Any = None

    def at_start(self) -> Settings:
        try:
            settings = load_settings(self.config, self.server)
        except ConfigError as e:
            self._report("Invalid config, starting with the defaults instead", e.problems)
            return self._defaults()
        if not settings.web_token:
            # Generated once and saved, so that the operator can read it in the admin UI.
            settings = attrs.evolve(settings, web_token=secrets.token_urlsafe(24))
        return self._accept(settings)

    def changed(self, current: Settings) -> Settings:
        """The settings after an admin UI change: the new ones, or `current` if it is invalid."""
        try:
            settings = load_settings(self.config, self.server)
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
        settings = self._accept(settings)
        self.log.info("Config updated")
        return settings

    def _report(self, what: str, problems: list[str]) -> None:
        for problem in problems:
            self.log.error(f"{what}: {problem}")
            self.metrics.error("config", f"{what}: {problem}")

    def _accept(self, settings: Settings) -> Settings:
        if self.config["web.token"] != settings.web_token:
            self.config["web.token"] = settings.web_token
        # Saving also writes the defaults of missing keys, as maubot's own handler does.
        self.config.save()
        self._valid_data = self.config._data
        return settings

    def _restore(self) -> None:
        if self._valid_data is None:
            self.log.error("No valid config was ever loaded; running on the defaults")
            return
        self.config._data = self._valid_data
        self.config.save()

    def _defaults(self) -> Settings:
        base = self.config.load_base()
        defaults = parse_settings(base._data if base else {}, self.server)
        # Not saved: the operator's text stays as it is, to be fixed in the admin UI. Its token
        # still opens the status page, which shows what is wrong.
        web = self.config._data.get("web") if isinstance(self.config._data, dict) else None
        token = web.get("token") if isinstance(web, dict) else None
        if not isinstance(token, str) or not token:
            token = secrets.token_urlsafe(24)
        return attrs.evolve(defaults, web_token=token)
