"""Creating the rooms the bot manages, with power levels that keep their structure the bot's.

Room version 12 gives a room's creator (the bot) unlimited power, and there the creator must not
be listed in the power levels; in older versions the bot must be listed, with the top level. So
rooms are created as version 12 where the homeserver offers it, and with the bot in the power
levels where it does not.
"""

from __future__ import annotations

from typing import Any

from maubot.matrix import MaubotMatrixClient
from mautrix.api import Method, Path
from mautrix.errors import MatrixError

from .power import ADMIN_LEVEL

CREATOR_POWER_VERSION = "12"


class RoomCreator:
    def __init__(self, client: MaubotMatrixClient) -> None:
        self.client = client
        # Whether the homeserver offers room version 12: asked until it answers, then kept.
        self._offers_v12: bool | None = None

    async def create(self, power_levels: dict[str, Any], **options: Any) -> str:
        if await self.offers_v12():
            options["room_version"] = CREATOR_POWER_VERSION
        else:
            users = {**power_levels.get("users", {}), self.client.mxid: ADMIN_LEVEL}
            power_levels = {**power_levels, "users": users}
        return await self.client.create_room(power_level_override=power_levels, **options)

    async def offers_v12(self) -> bool:
        if self._offers_v12 is None:
            try:
                answer = await self.client.api.request(Method.GET, Path.v3.capabilities)
            except MatrixError:
                # Unknown: the bot in the power levels works in every version up to 11.
                return False
            versions = (answer.get("capabilities") or {}).get("m.room_versions") or {}
            self._offers_v12 = CREATOR_POWER_VERSION in (versions.get("available") or {})
        return self._offers_v12
