"""Deploys the built plugin into a running maubot exactly as the admin UI does."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from attrs import define
from ruamel.yaml import YAML

from tests.config import config_yaml

from .matrix_user import MatrixUser
from .maubot_server import MaubotServer
from .synapse import Synapse

PLUGIN_ID = "org.agentspaces.maubot"
_counter = itertools.count()


@define
class Deployment:
    """One plugin instance on its own bot account (every instance on a client answers commands)."""

    server: MaubotServer
    synapse: Synapse
    instance_id: str
    bot_id: str
    prober: MatrixUser
    # The bot account's own token, for tests that read what only the bot sees (account data).
    bot_token: str = ""

    async def update_config(self, overrides: dict[str, Any] | None = None) -> dict:
        return await self.server.put_instance(self.instance_id, config=config_yaml(overrides))

    async def instance(self) -> dict:
        return await self.server.get_instance(self.instance_id)

    async def wait_started(self, timeout: float = 30) -> dict:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            info = await self.instance()
            if info.get("started"):
                return info
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"instance {self.instance_id} did not start:\n{info}")
            await asyncio.sleep(0.1)

    async def wait_stopped(self, timeout: float = 30) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while (await self.instance()).get("started"):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"instance {self.instance_id} did not stop")
            await asyncio.sleep(0.1)

    async def wait_live(self, timeout: float = 30) -> None:
        """Waits until the bot's client delivers live events to the plugin.

        maubot drops every event of the client's first /sync after a start, and its autojoin may
        join a room before the plugin's handlers are registered. So only an answer from the
        plugin proves it live: a fresh probe room gets `!<prefix> help` until the plugin replies.
        """
        info = await self.wait_started(timeout)
        # The prefix of the config the plugin runs on: maubot stores only a config it accepted.
        help_command = f"!{YAML(typ='safe').load(info['config'])['command_prefix']} help"
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            room_id = await self.prober.create_room(invite=[self.bot_id])
            try:
                await self.prober.wait_for_membership(room_id, self.bot_id, "join", timeout=2)
                await self.prober.ask(room_id, help_command, self.bot_id, timeout=3)
            except TimeoutError:
                continue
            finally:
                await self.prober.leave(room_id)
            return
        raise TimeoutError(f"bot {self.bot_id} never answered in a probe room")

    async def restart(self) -> None:
        """Restarts the whole maubot process by PID and waits until the bot is live again."""
        await asyncio.to_thread(self.server.restart)
        await self.wait_live()

    async def stop(self) -> None:
        """Stops maubot gracefully (SIGTERM): the plugin's stop() runs."""
        await asyncio.to_thread(self.server.stop)

    async def kill(self) -> None:
        """Kills maubot with SIGKILL: a crash, nothing of the plugin's stop() runs."""
        await asyncio.to_thread(self.server.kill)

    async def start(self) -> None:
        """Starts maubot again and waits until the bot is live."""
        await asyncio.to_thread(self.server.start)
        await self.wait_live()


async def deploy(
    server: MaubotServer,
    synapse: Synapse,
    mbp: Path,
    prober: MatrixUser,
    config: dict[str, Any] | None = None,
) -> Deployment:
    n = next(_counter)
    localpart = f"bot{n}_{server.port}"
    account = await asyncio.to_thread(synapse.register, localpart)
    await server.upload_plugin(mbp)
    await server.put_client(account["user_id"], account["access_token"], account["device_id"])
    instance_id = f"agents{n}_{server.port}"
    await server.put_instance(
        instance_id, type=PLUGIN_ID, primary_user=account["user_id"], enabled=True
    )
    deployment = Deployment(
        server, synapse, instance_id, account["user_id"], prober, account["access_token"]
    )
    await deployment.update_config(config)
    await deployment.wait_live()
    # Both kinds of server take the same path here; only maubot's log tells them apart.
    server.check_crypto_mode(account["user_id"])
    return deployment


@asynccontextmanager
async def deployed(
    server: MaubotServer,
    synapse: Synapse,
    mbp: Path,
    make_user: Callable[[str], Awaitable[MatrixUser]],
) -> AsyncIterator[Deployment]:
    """A fresh, live deployment with its own prober, retired (not deleted) when the block ends."""
    deployment = await deploy(server, synapse, mbp, await make_user("prober"))
    try:
        yield deployment
    finally:
        await server.retire(deployment.bot_id, deployment.instance_id)
