"""The admin UI's config, and the typed settings the rest of the plugin reads.

The admin UI accepts any YAML, so every value is checked here, once. Everything else in the plugin
reads `Settings`, never the raw config.
"""

from __future__ import annotations

import re
from typing import Any

from mautrix.util.config import BaseProxyConfig, ConfigUpdateHelper
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from .media_config import parse_media
from .settings import AgentSettings, Settings

BACKENDS = ("echo", "openai", "http", "openai_image")
ENCRYPT_MODES = ("auto", "always", "never")
GROUP_TRIGGERS = ("mention", "all")
# Keys whose values are never written to a log, not even when they have the wrong type.
SECRET_KEYS = ("api_key", "headers", "token")
_PREFIX_RE = re.compile(r"^[a-z0-9_-]+$")
_AGENT_ID_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


class Config(BaseProxyConfig):
    def do_update(self, helper: ConfigUpdateHelper) -> None:
        for key in CONFIG_KEYS:
            section = key.split(".")[0]
            if "." in key and section in helper.source:
                value = helper.source[section]
                if not isinstance(value, dict):
                    # Copying "web.token" out of `web: 5` would crash with a message naming no
                    # key; the wrong value is kept instead, so that validation names it.
                    helper.base[section] = value
                    continue
            helper.copy(key)


CONFIG_KEYS = (
    "command_prefix",
    "agents",
    "default_agent",
    "access.allowed",
    "access.admins",
    "onboarding.on_invite",
    "onboarding.space_name",
    "onboarding.rooms",
    "rooms.encrypt",
    "rooms.key_wait",
    "rooms.threads",
    "rooms.group_trigger",
    "dispatch.max_concurrency",
    "dispatch.edit_interval",
    "dispatch.max_edits",
    "dispatch.timeout",
    "limits.messages_per_minute",
    "limits.daily_tokens",
    "limits.rooms_per_user",
    "limits.pending_per_room",
    "limits.memory_entries",
    "limits.memory_entry_chars",
    "limits.answer_chars",
    "reconcile.timeout",
    "catch_up.max_age_hours",
    "catch_up.max_per_room",
    "web.token",
    "attachments.max_bytes",
    "attachments.images_in_context",
    "attachments.inline_text_chars",
    "speech.transcribe",
    "speech.speak",
)


class ConfigError(ValueError):
    """One or more invalid keys. The message names each key and says what is wrong."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class _Reader:
    """Reads typed values out of the raw mapping and collects every problem, not just the first."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.problems: list[str] = []
        # Sections that are not mappings: their keys are not reported one by one as well.
        self._broken: set[str] = set()

    def get(self, key: str) -> Any:
        node: Any = self.data
        path: list[str] = []
        for part in key.split("."):
            if not isinstance(node, dict):
                self.problem(".".join(path), f"must be a mapping of keys, got {_describe(node)}")
                self._broken.add(".".join(path))
                return None
            if part not in node:
                return None
            node = node[part]
            path.append(part)
        return node

    def problem(self, key: str, message: str) -> None:
        if any(key == broken or key.startswith(broken + ".") for broken in self._broken):
            return
        self.problems.append(f"{key}: {message}")

    def string(self, key: str, value: Any = None, *, required: bool = True, what: str = "") -> str:
        value = self.get(key) if value is None else value
        if value is None and not required:
            return ""
        if not isinstance(value, str) or (required and not value.strip()):
            got = (
                "it is missing"
                if value is None
                else f"got {_describe(value, secret=_is_secret(key))}"
            )
            self.problem(key, f"{what or 'must be a non-empty string'}; {got}")
            return ""
        return value

    def boolean(self, key: str, value: Any = None, *, default: bool | None = None) -> bool:
        value = self.get(key) if value is None else value
        if value is None and default is not None:
            return default
        if not isinstance(value, bool):
            self.problem(key, f"must be true or false, got {_describe(value)}")
            return bool(default)
        return value

    def number(
        self, key: str, value: Any = None, *, minimum: float, integer: bool, default: Any = None
    ) -> Any:
        value = self.get(key) if value is None else value
        if value is None and default is not None:
            return default
        valid_type = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, valid_type):
            kind = "a whole number" if integer else "a number"
            self.problem(key, f"must be {kind}, got {_describe(value)}")
            return minimum
        if value < minimum:
            self.problem(key, f"must be at least {minimum}, got {value}")
            return minimum
        return value

    def patterns(self, key: str, server: str) -> tuple[str, ...]:
        value = self.get(key)
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            self.problem(key, f"must be a list of Matrix ID patterns, got {_describe(value)}")
            return ()
        result = []
        for pattern in value:
            expanded = pattern.replace("{server}", server)
            if not expanded.startswith("@") or ":" not in expanded or "[" in expanded:
                self.problem(
                    key,
                    f"{pattern!r} is not a Matrix ID pattern like '@*:example.org' "
                    "(only * and ? are wildcards)",
                )
                continue
            result.append(expanded)
        return tuple(result)


def _is_secret(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in SECRET_KEYS


def _describe(value: Any, *, secret: bool = False) -> str:
    """The value as a log may show it: containers and secrets only by their type."""
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return f"a mapping of {len(value)} keys"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    kind = _KINDS.get(type(value), type(value).__name__)
    if secret:
        return kind
    return f"{kind} {repr(value)[:40]}"


_KINDS = {str: "text", bool: "true/false", int: "a number", float: "a number"}


def yaml_problem(error: Exception) -> str:
    """Why the config text does not parse, without quoting it: the quoted line may hold a secret."""
    if isinstance(error, MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"{error.problem} at line {mark.line + 1}, column {mark.column + 1}"
    if isinstance(error, YAMLError):
        return "the text is not valid YAML"
    return type(error).__name__


def _parse_agent(reader: _Reader, index: int, raw: Any) -> AgentSettings | None:
    key = f"agents[{index}]"
    if not isinstance(raw, dict):
        # A misplaced line of an agent can be its key, so the value is not quoted.
        got = _describe(raw, secret=True)
        reader.problem(key, f"must be a mapping with id and backend, got {got}")
        return None
    agent_id = reader.string(f"{key}.id", raw.get("id"))
    if agent_id and not _AGENT_ID_RE.match(agent_id):
        reader.problem(f"{key}.id", f"{agent_id!r} may only hold letters, digits, '.', '_', '-'")
    backend = reader.string(f"{key}.backend", raw.get("backend"))
    if backend and backend not in BACKENDS:
        reader.problem(f"{key}.backend", f"unknown backend {backend!r}; use one of {BACKENDS}")
    options: dict[str, Any] = {
        "max_context_tokens": reader.number(
            f"{key}.max_context_tokens",
            raw.get("max_context_tokens"),
            minimum=1,
            integer=True,
            default=8000,
        )
    }
    backend_options = _BACKEND_OPTIONS.get(backend)
    if backend_options is not None:
        options.update(backend_options(reader, key, raw))
    for url_key in ("base_url", "url"):
        url = options.get(url_key)
        if url and not url.startswith(("http://", "https://")):
            # Not quoted: a URL can carry credentials.
            reader.problem(f"{key}.{url_key}", "must start with http:// or https://")
    name = reader.string(f"{key}.name", raw.get("name"), required=False)
    description = reader.string(f"{key}.description", raw.get("description"), required=False)
    avatar = reader.string(f"{key}.avatar", raw.get("avatar"), required=False)
    if avatar and not avatar.startswith(("mxc://", "http://", "https://")):
        reader.problem(f"{key}.avatar", "must be an mxc:// URI or an http(s):// image URL")
    return AgentSettings(
        id=agent_id,
        name=name or agent_id,
        description=description,
        backend=backend,
        avatar=avatar,
        **options,
    )


def _openai_options(reader: _Reader, key: str, raw: dict[str, Any]) -> dict[str, Any]:
    def flag(name: str, default: bool) -> bool:
        return reader.boolean(f"{key}.{name}", raw.get(name), default=default)

    return {
        "base_url": _base_url(reader, key, raw, "openai"),
        **_texts(reader, key, raw, "api_key", "model", "system_prompt"),
        "stream": flag("stream", True),
        "vision": flag("vision", False),
        "pdf": flag("pdf", False),
    }


def _openai_image_options(reader: _Reader, key: str, raw: dict[str, Any]) -> dict[str, Any]:
    return {
        "base_url": _base_url(reader, key, raw, "openai_image"),
        **_texts(reader, key, raw, "api_key", "model", "size"),
    }


def _texts(reader: _Reader, key: str, raw: dict[str, Any], *names: str) -> dict[str, str]:
    """Optional text keys of an agent."""
    return {name: reader.string(f"{key}.{name}", raw.get(name), required=False) for name in names}


def _base_url(reader: _Reader, key: str, raw: dict[str, Any], backend: str) -> str:
    base_url = reader.string(
        f"{key}.base_url",
        raw.get("base_url"),
        what=f"is required for the {backend} backend (the server's URL, like "
        "https://api.openai.com/v1)",
    )
    return base_url.rstrip("/")


def _http_options(reader: _Reader, key: str, raw: dict[str, Any]) -> dict[str, Any]:
    url = reader.string(
        f"{key}.url", raw.get("url"), what="is required for the http backend (the webhook URL)"
    )
    headers = raw.get("headers") or {}
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        # The value may hold a secret, so only its type is named.
        reader.problem(f"{key}.headers", "must be a mapping of header names to strings")
        headers = {}
    return {
        "url": url,
        "headers": dict(headers),
        "send_history": reader.boolean(
            f"{key}.send_history", raw.get("send_history"), default=False
        ),
    }


_BACKEND_OPTIONS = {
    "openai": _openai_options,
    "http": _http_options,
    "openai_image": _openai_image_options,
}


def _parse_agents(reader: _Reader) -> dict[str, AgentSettings]:
    agents: dict[str, AgentSettings] = {}
    raw_agents = reader.get("agents")
    if not isinstance(raw_agents, list) or not raw_agents:
        reader.problem("agents", f"must be a non-empty list of agents, got {_describe(raw_agents)}")
        raw_agents = []
    for index, raw in enumerate(raw_agents):
        agent = _parse_agent(reader, index, raw)
        if agent is None or not agent.id:
            continue
        if agent.id in agents:
            reader.problem(
                f"agents[{index}].id", f"duplicate agent id {agent.id!r}; each id must be unique"
            )
        agents[agent.id] = agent
    return agents


def _agent_ids(reader: _Reader, key: str, agents: dict[str, AgentSettings]) -> list[str]:
    """A list of agent ids, each one of the configured agents."""
    ids = reader.get(key)
    if ids is None:
        return []
    if not isinstance(ids, list):
        reader.problem(key, f"must be a list of agent ids, got {_describe(ids)}")
        return []
    for agent_id in ids:
        if not isinstance(agent_id, str) or agent_id not in agents:
            shown = repr(agent_id) if isinstance(agent_id, str) else _describe(agent_id)
            reader.problem(key, f"{shown} is not one of the agents")
    return ids


def _space_name(reader: _Reader) -> str:
    space_name = reader.string("onboarding.space_name")
    try:
        space_name.format(displayname="x", user_id="x")
    except (KeyError, IndexError, ValueError, AttributeError):
        reader.problem(
            "onboarding.space_name", "may only use the placeholders {displayname} and {user_id}"
        )
    return space_name


def _choice(reader: _Reader, key: str, choices: tuple[str, ...]) -> str:
    value = reader.string(key)
    if value and value not in choices:
        reader.problem(key, f"must be one of {choices}, got {value!r}")
    return value


def _switch(reader: _Reader, key: str) -> bool:
    """on|off (YAML 1.1 readers give true|false for those words): both are taken."""
    value = reader.get(key)
    if isinstance(value, bool):
        return value
    if value in ("on", "off"):
        return value == "on"
    reader.problem(key, f"must be on or off, got {_describe(value)}")
    return False


def _encrypt_mode(reader: _Reader, crypto: bool) -> str:
    mode = _choice(reader, "rooms.encrypt", ENCRYPT_MODES)
    if mode == "always" and not crypto:
        reader.problem(
            "rooms.encrypt",
            "is 'always', but this maubot client has no encryption support, so the bot could "
            "not read the rooms it creates; use 'auto' or 'never', or enable encryption in "
            "maubot (see the README)",
        )
    return mode


def parse_settings(data: dict[str, Any], server: str, crypto: bool = True) -> Settings:
    """Validates the raw config. Raises ConfigError naming every bad key. `crypto` tells whether
    the bot's client can encrypt."""
    reader = _Reader(data)
    prefix = reader.string("command_prefix")
    if prefix and not _PREFIX_RE.match(prefix):
        reader.problem("command_prefix", f"{prefix!r} may only hold a-z, 0-9, '-' and '_'")
    agents = _parse_agents(reader)
    default_agent = reader.string("default_agent")
    if default_agent and agents and default_agent not in agents:
        reader.problem(
            "default_agent", f"{default_agent!r} is not one of the agents {list(agents)}"
        )
    onboarding_rooms = _agent_ids(reader, "onboarding.rooms", agents)

    def number(key: str, minimum: float, integer: bool = True) -> Any:
        return reader.number(key, minimum=minimum, integer=integer)

    settings = Settings(
        command_prefix=prefix,
        agents=agents,
        default_agent=default_agent,
        allowed=reader.patterns("access.allowed", server),
        admins=reader.patterns("access.admins", server),
        on_invite=reader.boolean("onboarding.on_invite"),
        space_name=_space_name(reader),
        onboarding_rooms=tuple(onboarding_rooms or [default_agent]),
        encrypt=_encrypt_mode(reader, crypto),
        key_wait=number("rooms.key_wait", 0, integer=False),
        max_concurrency=number("dispatch.max_concurrency", 1),
        edit_interval=number("dispatch.edit_interval", 0, integer=False),
        max_edits=number("dispatch.max_edits", 0),
        timeout=number("dispatch.timeout", 1, integer=False),
        messages_per_minute=number("limits.messages_per_minute", 0),
        daily_tokens=number("limits.daily_tokens", 0),
        rooms_per_user=number("limits.rooms_per_user", 1),
        pending_per_room=number("limits.pending_per_room", 1),
        memory_entries=number("limits.memory_entries", 1),
        memory_entry_chars=number("limits.memory_entry_chars", 1),
        answer_chars=number("limits.answer_chars", 1000),
        reconcile_timeout=number("reconcile.timeout", 1, integer=False),
        catch_up_max_age=number("catch_up.max_age_hours", 0, integer=False) * 3600,
        catch_up_max_per_room=number("catch_up.max_per_room", 0),
        web_token=reader.string("web.token", required=False),
        threads=_switch(reader, "rooms.threads"),
        group_trigger=_choice(reader, "rooms.group_trigger", GROUP_TRIGGERS),
        media=parse_media(reader),
    )
    if reader.problems:
        raise ConfigError(reader.problems)
    return settings


def load_settings(config: Config, server: str, crypto: bool = True) -> Settings:
    """Reads the instance's config text, fills in the defaults and validates the result.

    Nothing is saved here: the caller saves a config only once it has accepted it. Raises
    ConfigError naming every bad key, never quoting a secret.
    """
    try:
        config.load()
    except YAMLError as e:
        raise ConfigError([f"config: {yaml_problem(e)}"]) from None
    if not isinstance(config._data, dict):
        raise ConfigError([f"config: must be a mapping of keys, got {_describe(config._data)}"])
    config.update(save=False)
    return parse_settings(config._data, server, crypto)
