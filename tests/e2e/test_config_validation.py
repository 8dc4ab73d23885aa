"""Bad configs saved in the admin UI (PUT instance config through the management API).

For each: the maubot log names the bad key, the bot keeps answering on the last valid config
(with its old command prefix, although the bad config also changed it), the admin UI shows the
last valid config again, and no secret of the bad config reaches the log.
One deployment serves the whole module, per plugin database.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from tests.config import config_yaml
from tests.harness.deploy import Deployment, deploy
from tests.harness.matrix_user import MatrixUser
from tests.harness.maubot_server import MaubotServer
from tests.harness.synapse import Synapse

RUN = uuid.uuid4().hex[:8]
API_KEY = f"sk-e2e-SECRET-{RUN}"
HEADER = f"Bearer hdr-e2e-SECRET-{RUN}"
ECHO = {"id": "echo", "name": "Echo", "backend": "echo"}

# name -> (config overrides, the key the log must name, words of the message)
BAD_CONFIGS: dict[str, tuple[dict[str, Any], str, str]] = {
    "wrong types": (
        {"dispatch.max_concurrency": "lots", "onboarding.on_invite": "sometimes"},
        "dispatch.max_concurrency",
        "must be a whole number",
    ),
    "unknown backend": (
        {"agents": [ECHO, {"id": "gpt", "backend": "gpt4", "api_key": API_KEY}]},
        "agents[1].backend",
        "unknown backend 'gpt4'",
    ),
    "openai agent without base_url": (
        {"agents": [ECHO, {"id": "gpt", "backend": "openai", "api_key": API_KEY}]},
        "agents[1].base_url",
        "required for the openai backend",
    ),
    "http agent without url": (
        {"agents": [ECHO, {"id": "hook", "backend": "http", "headers": {"Authorization": HEADER}}]},
        "agents[1].url",
        "required for the http backend",
    ),
    "duplicate agent ids": (
        {
            "agents": [
                ECHO,
                {
                    "id": "echo",
                    "backend": "openai",
                    "base_url": "http://127.0.0.1:9/v1",
                    "api_key": API_KEY,
                },
            ]
        },
        "agents[1].id",
        "duplicate agent id 'echo'",
    ),
    "default agent that does not exist": (
        {"default_agent": "ghost"},
        "default_agent",
        "'ghost' is not one of the agents",
    ),
    "bad access patterns": (
        {"access.allowed": ["alice"], "access.admins": ["@[a-z]*:localhost"]},
        "access.allowed",
        "is not a Matrix ID pattern",
    ),
    "secret of the wrong type": (
        {
            "agents": [
                ECHO,
                {"id": "gpt", "backend": "openai", "base_url": "http://x/v1", "api_key": [API_KEY]},
            ]
        },
        "agents[1].api_key",
        "must be a non-empty string",
    ),
}


async def _user(synapse: Synapse, name: str) -> MatrixUser:
    account = await asyncio.to_thread(synapse.register, f"{name}_{uuid.uuid4().hex[:8]}")
    user = MatrixUser(synapse.url, account["user_id"], account["access_token"])
    user.start()
    await user.synced_once.wait()
    return user


class Setup:
    def __init__(self, bot: Deployment, alice: MatrixUser, room_id: str) -> None:
        self.bot = bot
        self.alice = alice
        self.room_id = room_id

    async def help_answers(self, prefix: str) -> bool:
        try:
            reply = await self.alice.ask(self.room_id, f"!{prefix} help", self.bot.bot_id, 15)
        except TimeoutError:
            return False
        return f"!{prefix} help" in reply.body

    async def stored_config(self) -> dict[str, Any]:
        return YAML(typ="safe").load((await self.bot.instance())["config"])

    def log_since(self, offset: int) -> str:
        return self.bot.server.log_text()[offset:]


@pytest.fixture(scope="module")
async def setup(maubot_server: MaubotServer, synapse: Synapse, mbp: Path) -> AsyncIterator[Setup]:
    prober = await _user(synapse, "prober")
    alice = await _user(synapse, "alice")
    bot = await deploy(maubot_server, synapse, mbp, prober)
    # The last valid config every case starts from: a prefix of its own, so that a bad config
    # that changes it shows whether anything of it was applied.
    await bot.update_config({"command_prefix": "valid"})
    room_id = await alice.create_room(invite=[bot.bot_id])
    await alice.wait_for_membership(room_id, bot.bot_id, "join")
    yield Setup(bot, alice, room_id)
    await maubot_server.retire(bot.bot_id, bot.instance_id)
    await alice.close()
    await prober.close()


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
async def test_bad_config_is_rejected_naming_the_key(setup: Setup, case: str) -> None:
    overrides, key, words = BAD_CONFIGS[case]
    offset = len(setup.bot.server.log_text())

    await setup.bot.update_config({**overrides, "command_prefix": "changed"})

    log = setup.log_since(offset)
    errors = [line for line in log.splitlines() if "Config change rejected" in line]
    assert any(f"{key}: " in line and words in line for line in errors), (
        f"{case}: no error naming {key!r} in the log:\n{log}"
    )
    assert await setup.help_answers("valid"), f"{case}: the bot stopped answering `!valid help`"
    stored = await setup.stored_config()
    assert stored["command_prefix"] == "valid", f"{case}: the admin UI shows the rejected config"
    full_log = setup.bot.server.log_text()
    assert API_KEY not in full_log, f"{case}: the api_key reached the log"
    assert "hdr-e2e-SECRET" not in full_log, f"{case}: a header value reached the log"


async def test_unparseable_yaml_is_rejected_without_quoting_it(setup: Setup) -> None:
    offset = len(setup.bot.server.log_text())
    text = f"command_prefix: changed\nagents:\n  - id: x\n   api_key: '{API_KEY}\n"

    await setup.bot.server.put_instance(setup.bot.instance_id, config=text)

    log = setup.log_since(offset)
    assert "Config change rejected, keeping the last valid config: config: " in log, log
    assert "line 4" in log, log
    assert API_KEY not in setup.bot.server.log_text()
    assert await setup.help_answers("valid")


async def test_a_restart_after_a_rejection_runs_on_the_last_valid_config(setup: Setup) -> None:
    await setup.bot.update_config({"command_prefix": "changed", "default_agent": "ghost"})
    token = (await setup.stored_config())["web"]["token"]

    await setup.bot.restart()

    assert await setup.help_answers("valid"), "after a restart the bot answers `!valid help`"
    stored = await setup.stored_config()
    assert stored["command_prefix"] == "valid"
    assert stored["web"]["token"] == token


async def test_a_valid_change_applies_and_keeps_the_web_token(setup: Setup) -> None:
    token = (await setup.stored_config())["web"]["token"]
    offset = len(setup.bot.server.log_text())

    # The harness sends base-config.yaml, whose web.token is empty, as an operator who pasted it.
    await setup.bot.update_config({"command_prefix": "fresh"})

    assert "Config updated" in setup.log_since(offset)
    assert await setup.help_answers("fresh"), "the new prefix answers"
    stored = await setup.stored_config()
    assert stored["command_prefix"] == "fresh"
    assert stored["web"]["token"] == token, "emptying web.token keeps the token in use"
    await setup.bot.update_config({"command_prefix": "valid"})
    assert await setup.help_answers("valid")


async def test_an_invalid_config_saved_while_disabled_runs_on_the_last_valid_one(
    setup: Setup,
) -> None:
    server, instance = setup.bot.server, setup.bot.instance_id
    offset = len(server.log_text())
    # maubot validates nothing of a config saved while the instance is disabled and stopped (as
    # the admin UI's switch does).
    await server.put_instance(instance, enabled=False, started=False)
    await setup.bot.wait_stopped()
    broken = {"command_prefix": "changed", "default_agent": "ghost", "access.allowed": ["@*:*"]}
    await server.put_instance(instance, config=config_yaml(broken))
    await server.put_instance(instance, enabled=True, started=True)
    await setup.bot.wait_started()

    assert await setup.help_answers("valid"), "it runs on the last valid config"
    log = setup.log_since(offset)
    assert "Invalid config at start; running on the last valid config instead" in log, log
    assert "default_agent" in log
    stored = await setup.stored_config()
    assert stored["command_prefix"] == "changed", "the operator's text stays, to be fixed"
    await setup.bot.update_config({"command_prefix": "valid"})
    assert await setup.help_answers("valid")
