"""Config validation: every mistake an operator can make in the admin UI names its key, never
quotes a secret, and a rejected change leaves the last valid config running and stored."""

from __future__ import annotations

import io
import logging
import re

import pytest
from mautrix.util.config import RecursiveDict
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from plugin.db import Store
from plugin.ops.config import CONFIG_KEYS, Config, ConfigError, load_settings
from plugin.ops.live_config import LiveConfig
from plugin.ops.metrics import Metrics
from tests import config as helpers

BASE = (helpers.ROOT / "base-config.yaml").read_text()
SECRET = "sk-unit-SECRET-4242"
HEADER_SECRET = "Bearer hdr-unit-SECRET-4242"
yaml = YAML()


class StoredConfig:
    """The instance's config text, as maubot keeps it; `save` is what maubot's save does."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.saves = 0

    def config(self) -> Config:
        return Config(
            lambda: yaml.load(self.text),
            lambda: RecursiveDict(yaml.load(BASE), CommentedMap),
            self.save,
        )

    def save(self, data: RecursiveDict[CommentedMap]) -> None:
        buf = io.StringIO()
        yaml.dump(data, buf)
        self.text = buf.getvalue()
        self.saves += 1


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_settings(StoredConfig(text).config(), "example.org")
    return raised.value.problems


def test_base_config_is_valid_and_every_key_reaches_the_settings() -> None:
    settings = load_settings(StoredConfig("").config(), "example.org")
    assert settings.command_prefix == "ai"
    assert list(settings.agents) == ["echo"]
    assert settings.allowed == ("@*:example.org",)
    assert settings.onboarding_rooms == ("echo",)
    assert settings.catch_up_max_age == 24 * 3600
    assert settings.web_token == ""


def test_every_key_is_documented_by_a_comment_in_base_config() -> None:
    lines = BASE.splitlines()
    data = yaml.load(BASE)
    for key in CONFIG_KEYS:
        *parents, leaf = key.split(".")
        node = data
        for parent in parents:
            node = node[parent]
        assert leaf in node, f"{key} is missing from base-config.yaml"
        indent = "  " * len(parents)
        (index,) = [
            i
            for i, line in enumerate(lines)
            if re.match(rf"^{indent}{leaf}:", line)
            and (not parents or _section_of(lines, i) == parents[0])
        ]
        before = lines[index - 1].strip()
        assert before.startswith("#"), f"{key} has no comment above it in base-config.yaml"


def _section_of(lines: list[str], index: int) -> str:
    for line in reversed(lines[:index]):
        if line and not line.startswith((" ", "#")):
            return line.split(":")[0]
    return ""


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("dispatch:\n  max_concurrency: lots\n", "dispatch.max_concurrency", "whole number"),
        ("dispatch:\n  timeout: 0\n", "dispatch.timeout", "at least"),
        ("onboarding:\n  on_invite: sometimes\n", "onboarding.on_invite", "true or false"),
        ("web: 5\n", "web", "mapping"),
        ("command_prefix: 'A I'\n", "command_prefix", "may only hold"),
        (
            "agents:\n- id: echo\n  backend: gpt4\n",
            "agents[0].backend",
            "unknown backend 'gpt4'",
        ),
        (
            f"agents:\n- id: echo\n  backend: echo\n- id: o\n  backend: openai\n"
            f"  api_key: {SECRET}\n",
            "agents[1].base_url",
            "required for the openai backend",
        ),
        (
            "agents:\n- id: echo\n  backend: echo\n- id: h\n  backend: http\n"
            f"  headers: {{Authorization: {HEADER_SECRET}}}\n",
            "agents[1].url",
            "required for the http backend",
        ),
        (
            "agents:\n- id: echo\n  backend: echo\n- id: echo\n  backend: echo\n",
            "agents[1].id",
            "duplicate agent id 'echo'",
        ),
        ("default_agent: ghost\n", "default_agent", "'ghost' is not one of the agents"),
        ("access:\n  allowed: [alice]\n", "access.allowed", "not a Matrix ID pattern"),
        ("access:\n  admins: ['@[a-z]*:x']\n", "access.admins", "not a Matrix ID pattern"),
        ("access:\n  allowed: '@*:x'\n", "access.allowed", "must be a list"),
        ("onboarding:\n  rooms: [ghost]\n", "onboarding.rooms", "not one of the agents"),
        ("rooms:\n  encrypt: maybe\n", "rooms.encrypt", "must be one of"),
        ("rooms:\n  key_wait: soon\n", "rooms.key_wait", "must be a number"),
        ("agents: []\n", "agents", "non-empty list"),
        (f"agents:\n  - id: x\n   api_key: '{SECRET}\n", "config", "line 3"),
        ("- just\n- a list\n", "config", "mapping"),
    ],
)
def test_each_mistake_names_its_key(text: str, key: str, words: str) -> None:
    problems = problems_of(text)
    assert any(p.startswith(f"{key}: ") and words in p for p in problems), problems
    assert all(SECRET not in p and "hdr-unit" not in p for p in problems), problems


@pytest.mark.parametrize(
    "text",
    [
        "agents:\n- id: o\n  backend: openai\n  base_url: http://x\n  api_key: 987654321\n",
        "agents:\n- id: h\n  backend: http\n  url: http://x\n  headers: [987654321]\n",
        "agents: {id: o, api_key: '987654321'}\n",
        "agents:\n- id: o\n  backend: openai\n  base_url: 'ftp://u:987654321@x'\n",
        "web:\n  token: 987654321\n",
        "agents:\n- '987654321'\n",
    ],
)
def test_secrets_of_the_wrong_type_are_not_quoted(text: str) -> None:
    problems = problems_of(text)
    assert problems
    assert all("987654321" not in p for p in problems), problems


def test_a_broken_section_is_reported_once_not_key_by_key() -> None:
    assert problems_of("dispatch: [1, 2]\n") == [
        "dispatch: must be a mapping of keys, got a list of 2 items"
    ]


def _live(
    stored: StoredConfig, store: Store, crypto: bool = True
) -> tuple[LiveConfig, Metrics, list[str]]:
    logged: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append(record.getMessage())

    log = logging.getLogger(f"test.live_config.{id(stored)}")
    log.addHandler(Capture())
    log.setLevel(logging.DEBUG)
    metrics = Metrics()
    live = LiveConfig(stored.config(), "example.org", store.state, log, metrics, lambda: crypto)
    return live, metrics, logged


async def test_first_start_generates_and_saves_the_web_token(store: Store) -> None:
    stored = StoredConfig("")
    live, _, logged = _live(stored, store)
    settings = await live.at_start()
    assert len(settings.web_token) >= 24
    assert yaml.load(stored.text)["web"]["token"] == settings.web_token
    assert all(settings.web_token not in line for line in logged)


async def test_a_rejected_change_keeps_and_restores_the_last_valid_config(store: Store) -> None:
    stored = StoredConfig("command_prefix: bot\n")
    live, metrics, logged = _live(stored, store)
    settings = await live.at_start()
    valid_text = stored.text

    stored.text = (
        "command_prefix: changed\nagents:\n- id: echo\n  backend: echo\n"
        f"- id: o\n  backend: openai\n  api_key: {SECRET}\n"
    )
    after = await live.changed(settings)

    assert after is settings
    assert after.command_prefix == "bot"
    # What the admin UI shows, and what a restart loads, is the last valid config again.
    assert stored.text == valid_text
    assert any("agents[1].base_url" in line and "rejected" in line for line in logged), logged
    assert all(SECRET not in line for line in logged)
    assert metrics.errors_by_kind["config"] == 1
    assert "agents[1].base_url" in metrics.recent_errors[-1].message


async def test_unparseable_yaml_is_rejected_without_quoting_the_line(store: Store) -> None:
    stored = StoredConfig("")
    live, _, logged = _live(stored, store)
    settings = await live.at_start()
    valid_text = stored.text
    stored.text = f"agents:\n  - id: x\n   api_key: '{SECRET}\n"
    assert await live.changed(settings) is settings
    assert stored.text == valid_text
    assert any("line 3" in line for line in logged), logged
    assert all(SECRET not in line for line in logged)


async def test_a_valid_change_applies_and_keeps_the_token_when_emptied(store: Store) -> None:
    stored = StoredConfig("")
    live, _, logged = _live(stored, store)
    settings = await live.at_start()
    stored.text = "command_prefix: bot\nweb:\n  token: ''\n"
    after = await live.changed(settings)
    assert after.command_prefix == "bot"
    assert after.web_token == settings.web_token
    assert yaml.load(stored.text)["web"]["token"] == settings.web_token
    assert "Config updated" in logged


async def test_an_invalid_config_at_start_runs_on_the_last_valid_one(store: Store) -> None:
    stored = StoredConfig("command_prefix: bot\nweb:\n  token: operator-token-123\n")
    live, _, _ = _live(stored, store)
    await live.at_start()
    # Edited while the instance was stopped (maubot does not validate that), then started.
    text = "command_prefix: broken\ndefault_agent: ghost\naccess:\n  allowed: ['@*:*']\n"
    stored.text = text
    live, metrics, logged = _live(stored, store)

    settings = await live.at_start()

    assert settings.command_prefix == "bot", "the last valid config, not the defaults"
    assert settings.allowed == ("@*:example.org",)
    assert stored.text == text, "the operator's text stays, to be fixed in the admin UI"
    assert any("default_agent" in line and "last valid config" in line for line in logged)
    assert "last valid config" in live.status and metrics.errors_by_kind["config"] == 1
    # The first valid change is accepted as usual.
    stored.text = "command_prefix: fixed\n"
    assert (await live.changed(settings)).command_prefix == "fixed"
    assert live.status == "valid"


async def test_an_invalid_config_at_first_start_serves_admins_only(store: Store) -> None:
    text = (
        "default_agent: ghost\naccess:\n  allowed: ['@*:{server}']\n  admins: ['@root:{server}']"
        "\nweb:\n  token: operator-token-123\n"
    )
    stored = StoredConfig(text)
    live, _, logged = _live(stored, store)

    settings = await live.at_start()

    # Fails closed: the defaults would admit every user of the homeserver.
    assert settings.allowed == ()
    assert settings.admins == ("@root:example.org",)
    assert settings.web_token == "operator-token-123", "the status page still opens"
    assert stored.text == text
    assert any("serving admins only" in line for line in logged), logged
    assert "admins only" in live.status


def test_encrypt_always_needs_a_client_with_crypto() -> None:
    text = "rooms:\n  encrypt: always\n"
    with pytest.raises(ConfigError) as raised:
        load_settings(StoredConfig(text).config(), "example.org", crypto=False)
    (problem,) = raised.value.problems
    assert problem.startswith("rooms.encrypt: is 'always', but this maubot client has no "), problem
    assert "could not read the rooms it creates" in problem
    for mode in ("auto", "never"):
        settings = load_settings(
            StoredConfig(f"rooms:\n  encrypt: {mode}\n").config(), "example.org", crypto=False
        )
        assert settings.encrypt == mode
    assert load_settings(StoredConfig(text).config(), "example.org").encrypt == "always"


async def test_encrypt_always_is_rejected_live_without_crypto(store: Store) -> None:
    stored = StoredConfig("")
    live, metrics, logged = _live(stored, store, crypto=False)
    settings = await live.at_start()
    valid_text = stored.text

    stored.text = "rooms:\n  encrypt: always\n"
    after = await live.changed(settings)

    assert after is settings and after.encrypt == "auto"
    assert stored.text == valid_text
    assert any("rejected" in line and "rooms.encrypt: is 'always'" in line for line in logged)
    assert metrics.errors_by_kind["config"] == 1


def test_parse_settings_expands_server_in_patterns() -> None:
    settings = helpers.settings({"access.admins": ["@admin:{server}"]})
    assert settings.admins == ("@admin:example.org",)


def test_the_readme_documents_every_key() -> None:
    readme = (helpers.ROOT / "README.md").read_text()
    missing = [key for key in CONFIG_KEYS if f"| `{key}` |" not in readme]
    assert not missing, f"README.md's configuration reference lacks {missing}"
