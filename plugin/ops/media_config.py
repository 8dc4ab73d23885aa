"""The `attachments.*` and `speech.*` keys of the config, validated into `MediaSettings`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .settings import MediaSettings, SpeechEndpoint

if TYPE_CHECKING:
    from .config import _Reader

# The keys of `speech.transcribe` and `speech.speak`; the last one differs between the two.
_ENDPOINT_KEYS = ("base_url", "api_key", "model")


def parse_media(reader: _Reader) -> MediaSettings:
    def number(key: str, minimum: int) -> Any:
        return reader.number(key, minimum=minimum, integer=True)

    return MediaSettings(
        max_bytes=number("attachments.max_bytes", 1),
        images_in_context=number("attachments.images_in_context", 0),
        inline_text_chars=number("attachments.inline_text_chars", 0),
        transcribe=_endpoint(reader, "speech.transcribe", "language"),
        speak=_endpoint(reader, "speech.speak", "voice"),
    )


def _endpoint(reader: _Reader, key: str, extra: str) -> SpeechEndpoint | None:
    """An endpoint, or None when its `base_url` is empty (not set up)."""
    raw = reader.get(key)
    if raw is None:
        return None
    if not isinstance(raw, dict):
        reader.problem(key, "must be a mapping with base_url, api_key, model and " + extra)
        return None
    values = {
        name: reader.string(f"{key}.{name}", raw.get(name), required=False)
        for name in (*_ENDPOINT_KEYS, extra)
    }
    base_url = values["base_url"].rstrip("/")
    if not base_url:
        return None
    if not base_url.startswith(("http://", "https://")):
        # Not quoted: a URL can carry credentials.
        reader.problem(f"{key}.base_url", "must start with http:// or https://")
        return None
    return SpeechEndpoint(
        base_url=base_url,
        api_key=values["api_key"],
        model=values["model"],
        language=values.get("language", ""),
        voice=values.get("voice", ""),
    )
