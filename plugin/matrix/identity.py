"""The agent's identity in its rooms: the bot's display name and avatar there are the agent's.

It is the bot's own member event in each working room (a per-room profile); the bot's global
profile is unchanged. An avatar given as an image URL is uploaded once: its mxc:// URI is kept
in the plugin's state, and uploaded again only if that is lost.
"""

from __future__ import annotations

import json
from logging import Logger

import aiohttp
from attrs import define
from maubot.matrix import MaubotMatrixClient
from mautrix.errors import MatrixError

from ..db import Store
from ..ops.settings import AgentSettings
from .outbox import Outbox

MEMBER = "m.room.member"
# The largest avatar image the plugin downloads to upload it.
MAX_AVATAR_BYTES = 5 * 1024 * 1024
_STATE_KEY = "avatar:"


@define(eq=False)
class AgentIdentity:
    client: MaubotMatrixClient
    outbox: Outbox
    store: Store
    http: aiohttp.ClientSession
    log: Logger

    async def apply(self, room_id: str, agent: AgentSettings) -> None:
        """Sets the bot's member event in the room to the agent's name and avatar."""
        content: dict[str, str] = {"membership": "join", "displayname": agent.name}
        avatar = await self.avatar_uri(agent)
        if avatar:
            content["avatar_url"] = avatar
        await self.outbox.state(room_id, MEMBER, content, self.client.mxid)

    async def avatar_uri(self, agent: AgentSettings) -> str:
        """The agent's avatar as an mxc:// URI; '' if it has none or it cannot be fetched (the
        name still applies, and the log says why)."""
        if not agent.avatar or agent.avatar.startswith("mxc://"):
            return agent.avatar
        key = _STATE_KEY + agent.avatar
        known = await self.store.state.get(key)
        if known:
            return str(json.loads(known))
        try:
            uri = await self._upload(agent.avatar)
        except (aiohttp.ClientError, MatrixError, ValueError, TimeoutError) as e:
            self.log.warning(f"Could not upload the avatar of agent {agent.id}: {e}")
            return ""
        await self.store.state.set(key, json.dumps(uri))
        return uri

    async def _upload(self, url: str) -> str:
        async with self.http.get(url) as resp:
            if resp.status >= 300:
                raise ValueError(f"HTTP {resp.status}")
            data = bytearray()
            # `read(n)` gives what is buffered; the whole body takes a loop.
            async for chunk in resp.content.iter_chunked(64 * 1024):
                data += chunk
                if len(data) > MAX_AVATAR_BYTES:
                    break
            mime = resp.content_type or "application/octet-stream"
        if len(data) > MAX_AVATAR_BYTES:
            raise ValueError(f"the image is larger than {MAX_AVATAR_BYTES} bytes")
        return str(await self.client.upload_media(bytes(data), mime_type=mime))
