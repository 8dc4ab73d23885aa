"""An OpenAI-compatible `/images/generations` endpoint: each message is a prompt, and the answer
is the image it generates (DALL·E, gpt-image-1, or a local server with the same API)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from ..media.kinds import sniff_image
from .base import AgentRequest, BackendBadResponse, Delta, post_json, read_json
from .files import OutFile, b64_size


class OpenAIImageBackend:
    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http

    async def reply(self, request: AgentRequest) -> AsyncIterator[Delta]:
        agent = request.agent
        headers = {"Authorization": f"Bearer {agent.api_key}"} if agent.api_key else {}
        body: dict[str, Any] = {"prompt": request.text, "n": 1}
        if agent.model:
            body["model"] = agent.model
        if agent.size:
            body["size"] = agent.size
        # gpt-image models always answer base64 and refuse the parameter; DALL·E answers a URL
        # unless asked.
        if not agent.model.startswith("gpt-image"):
            body["response_format"] = "b64_json"
        resp = await post_json(self.http, f"{agent.base_url}/images/generations", body, headers)
        try:
            answer = await read_json(resp)
        finally:
            resp.release()
        item = _first_image(answer)
        data = await self._image_data(item, request.max_file_bytes)
        caption = item.get("revised_prompt")
        mimetype = sniff_image(data)
        name = "image" + _SUFFIXES.get(mimetype, ".png")
        yield OutFile(mimetype, name, data, caption=caption if isinstance(caption, str) else "")

    async def _image_data(self, item: dict[str, Any], limit: int) -> bytes | bytearray:
        encoded = item.get("b64_json")
        if isinstance(encoded, str):
            if len(encoded) > b64_size(limit):
                raise BackendBadResponse(f"the image is larger than {limit} bytes")
            try:
                return base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError) as e:
                raise BackendBadResponse("b64_json is not base64") from e
        url = item.get("url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise BackendBadResponse("the image has neither b64_json nor a url")
        async with self.http.get(url) as resp:
            if resp.status >= 300:
                raise BackendBadResponse(f"the image's url answered HTTP {resp.status}")
            data = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                if len(data) + len(chunk) > limit:
                    raise BackendBadResponse(f"the image is larger than {limit} bytes")
                data += chunk
            return data


_SUFFIXES = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif"}


def _first_image(answer: Any) -> dict[str, Any]:
    try:
        item = answer["data"][0]
    except (KeyError, IndexError, TypeError) as e:
        raise BackendBadResponse("no data[0] image") from e
    if not isinstance(item, dict):
        raise BackendBadResponse("data[0] is not an image object")
    return item
