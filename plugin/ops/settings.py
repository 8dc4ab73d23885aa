"""The typed settings that the whole plugin reads; only `ops.config` builds them."""

from __future__ import annotations

from attrs import field, frozen


@frozen
class AgentSettings:
    id: str
    name: str
    description: str
    backend: str
    max_context_tokens: int = 8000
    base_url: str = ""
    api_key: str = field(default="", repr=False)
    model: str = ""
    system_prompt: str = ""
    stream: bool = True
    url: str = ""
    headers: dict[str, str] = field(factory=dict, repr=False)
    send_history: bool = False
    # The agent's avatar in its rooms: an mxc:// URI, or an image URL the plugin uploads once.
    avatar: str = ""
    # openai: the model sees images, reads PDFs. openai_image: the generated image's size.
    vision: bool = False
    pdf: bool = False
    size: str = ""


@frozen
class SpeechEndpoint:
    """An OpenAI-compatible audio endpoint (`speech.transcribe` or `speech.speak`)."""

    base_url: str
    api_key: str = field(repr=False)
    model: str
    # transcribe: the spoken language (empty: detected); speak: the voice.
    language: str = ""
    voice: str = ""


@frozen
class MediaSettings:
    max_bytes: int = 10 * 1024 * 1024
    images_in_context: int = 1
    inline_text_chars: int = 50_000
    # None: not set up.
    transcribe: SpeechEndpoint | None = None
    speak: SpeechEndpoint | None = None


@frozen
class Settings:
    command_prefix: str
    agents: dict[str, AgentSettings]
    default_agent: str
    allowed: tuple[str, ...]
    admins: tuple[str, ...]
    on_invite: bool
    space_name: str
    onboarding_rooms: tuple[str, ...]
    encrypt: str
    key_wait: float
    max_concurrency: int
    edit_interval: float
    max_edits: int
    timeout: float
    messages_per_minute: int
    daily_tokens: int
    rooms_per_user: int
    pending_per_room: int
    memory_entries: int
    memory_entry_chars: int
    answer_chars: int
    reconcile_timeout: float
    catch_up_max_age: float
    catch_up_max_per_room: int
    web_token: str = field(repr=False)
    # Threads are conversations of their own (`rooms.threads`).
    threads: bool = True
    # When the agent answers in a room with collaborators: "mention" or "all".
    group_trigger: str = "mention"
    media: MediaSettings = MediaSettings()
