"""Pictures, files and voice in-process: what reaches the agent, the notices, the size cap while
streaming, the context's references, files the bot posts, and voice in and out."""

from __future__ import annotations

import base64
import json
from typing import Any

import aiohttp
import attrs
import pytest
from mautrix.crypto.attachments import decrypt_attachment, encrypt_attachment

from plugin.agents import openai
from plugin.agents.base import AgentRequest, Turn
from plugin.agents.files import Attachment, Blobs, OutFile
from plugin.agents.http import HttpBackend
from plugin.db import Store
from plugin.db.rows import NewTurn
from plugin.matrix.replies import ASIDE_KEY, CONTINUED_KEY, FAILED_KEY
from plugin.media import crypto
from plugin.media.refs import from_json
from plugin.ops.config import ConfigError
from tests.config import agent_settings, settings
from tests.fakes.matrix import FakeMatrix
from tests.fakes.servers import Behavior, FakeAgentPlatform, FakeOpenAI
from tests.fakes.world import ScriptedAgent, World, make_world, script_agent

ROOM = "!room:example.org"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
AGENTS = [
    {"id": "plain", "name": "Plain", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"},
    {
        "id": "seer",
        "name": "Seer",
        "backend": "openai",
        "base_url": "http://127.0.0.1:9/v1",
        "vision": True,
    },
    {"id": "hook", "name": "Hook", "backend": "http", "url": "http://127.0.0.1:9/hook"},
]
CONFIG = {"agents": AGENTS, "default_agent": "seer", "dispatch.edit_interval": 0.0}


async def prepare(
    world: World, monkeypatch: pytest.MonkeyPatch, agent: str = "seer", **config: Any
) -> ScriptedAgent:
    backend = script_agent(monkeypatch)
    world.configure({**CONFIG, **config})
    await world.add_room(ROOM, agent_id=agent)
    return backend


async def send(world: World, data: bytes, name: str, mimetype: str, **kwargs: Any) -> Any:
    return await deliver(world, world.fake.media_message(ROOM, data, name, mimetype, **kwargs))


async def deliver(world: World, evt: Any) -> Any:
    """A message handed to the plugin as maubot would, answered."""
    await world.parts.intake.on_message(evt)
    await world.settle()
    return evt


async def refused(world: World, backend: ScriptedAgent, evt: Any) -> str:
    """The one notice a message that did not go to the agent got."""
    await deliver(world, evt)
    assert backend.calls == []
    (notice,) = replies_to(world, evt.event_id)
    assert notice[FAILED_KEY] is True
    return notice["body"]


def replies_to(world: World, event_id: str) -> list[dict[str, Any]]:
    return [
        s.content
        for s in world.fake.messages(ROOM)
        if (s.content.get("m.relates_to") or {}).get("m.in_reply_to", {}).get("event_id")
        == event_id
    ]


async def user_turns(store: Store) -> list[Any]:
    return [t for t in await store.turns.of_room(ROOM) if t.role == "user"]


async def test_an_image_reaches_a_vision_agent_with_its_bytes_and_caption(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)

    evt = await send(world, PNG, "cat.png", "image/png", caption="what is this?")

    (call,) = backend.calls
    assert call.text == "what is this?", "the caption is the message's text"
    (att,) = call.attachments
    assert (att.kind, att.mimetype, att.name, att.size) == (
        "image",
        "image/png",
        "cat.png",
        len(PNG),
    )
    assert bytes(att.data) == PNG
    assert world.fake.final_texts(ROOM)[evt.event_id] == "re: what is this?"
    (turn,) = await user_turns(world.store)
    assert turn.content == "what is this?"
    (ref,) = from_json(turn.attachments)
    assert ref.mxc == evt.content.url and ref.data is None, "the context keeps a reference"
    assert "data" not in turn.attachments and str(PNG[:8]) not in turn.attachments


async def test_a_non_vision_agent_gets_a_notice_and_retry_works_after_a_switch(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch, agent="plain")

    evt = await send(world, PNG, "cat.png", "image/png")

    assert backend.calls == []
    (notice,) = replies_to(world, evt.event_id)
    assert notice[FAILED_KEY] is True
    assert "Plain cannot see images" in notice["body"]
    assert "Seer, Hook" in notice["body"] and "retry" in notice["body"]
    await world.command(ROOM, "use seer")
    await world.command(ROOM, "retry")
    await world.settle()
    (call,) = backend.calls
    assert bytes(call.attachments[0].data) == PNG


async def test_a_sticker_is_an_image(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = await prepare(world, monkeypatch)
    mxc = world.fake.add_media(PNG)
    await deliver(world, world.fake.message(ROOM, "a cat", msgtype="m.sticker", extra={"url": mxc}))

    assert bytes(backend.calls[0].attachments[0].data) == PNG


@pytest.mark.parametrize("declared", [True, False])
async def test_a_file_over_the_cap_gets_a_notice_and_the_download_stops_there(
    world: World, monkeypatch: pytest.MonkeyPatch, declared: bool
) -> None:
    backend = await prepare(world, monkeypatch, agent="hook", **{"attachments.max_bytes": 100_000})
    world.fake.declare_media_size = declared
    big = bytes(1_000_000)
    mxc = world.fake.add_media(big)
    # A client that names no size: only the download itself can tell.
    evt = world.fake.message(ROOM, "big.bin", msgtype="m.file", extra={"url": mxc})

    assert "`big.bin` is larger than" in await refused(world, backend, evt)
    assert world.fake.media_streamed <= 100_000 + 64 * 1024, "stopped at the cap"
    (turn,) = await user_turns(world.store)
    assert not turn.answered, "kept for a retry"


async def test_the_declared_size_is_refused_without_a_download(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await prepare(world, monkeypatch, agent="hook", **{"attachments.max_bytes": 100})

    await send(world, PNG, "cat.png", "image/png")

    assert world.fake.downloads == []


async def test_legacy_media_is_the_fallback_and_a_failed_download_is_told(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    world.fake.authenticated_media = False

    await send(world, PNG, "one.png", "image/png")
    world.fake.fail["download"] = 1
    failed = await send(world, PNG, "two.png", "image/png")

    assert bytes(backend.calls[0].attachments[0].data) == PNG
    assert [p.split("/download/")[0] for p in world.fake.downloads[:2]] == [
        "/_matrix/client/v1/media",
        "/_matrix/media/v3",
    ]
    assert "could not be downloaded (HTTP 502)" in replies_to(world, failed.event_id)[0]["body"]


async def test_a_text_file_is_put_into_the_message(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch, agent="plain")

    await send(world, b"a,b\n1,2\n", "data.csv", "text/csv", msgtype="m.file", caption="sum it")

    (call,) = backend.calls
    assert call.text == "sum it\n\n--- data.csv ---\na,b\n1,2\n\n--- end of data.csv ---"
    assert call.attachments == ()
    (ref,) = from_json((await user_turns(world.store))[0].attachments)
    assert ref.inlined


async def test_a_pdf_goes_to_http_agents_and_is_refused_by_others(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch, agent="hook")
    pdf = b"%PDF-1.7\n" + bytes(3000)

    await send(world, pdf, "report.pdf", "application/pdf", msgtype="m.file")
    await world.command(ROOM, "use seer")
    refused = await send(world, pdf, "report.pdf", "application/pdf", msgtype="m.file")

    (call,) = backend.calls
    assert bytes(call.attachments[0].data) == pdf
    assert "Seer cannot read PDFs" in replies_to(world, refused.event_id)[0]["body"]


async def test_the_newest_image_is_sent_again_and_older_ones_as_labels(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    other = PNG[::-1]

    await send(world, PNG, "first.png", "image/png")
    await send(world, other, "second.png", "image/png")
    await world.say(ROOM, "and now?")
    await world.settle()

    last = backend.calls[-1]
    first_turn, second_turn = (t for t in last.history if t.role == "user")
    assert first_turn.attachments[0].data is None, "older: a label"
    assert bytes(second_turn.attachments[0].data) == other, "the newest image, again"
    assert last.attachments == ()


@pytest.mark.parametrize(("budget", "again"), [(8000, True), (700, False)])
async def test_an_earlier_image_is_sent_again_only_within_the_token_budget(
    world: World, monkeypatch: pytest.MonkeyPatch, budget: int, again: bool
) -> None:
    seer = {**AGENTS[1], "max_context_tokens": budget}
    backend = await prepare(world, monkeypatch, agents=[seer], default_agent="seer")

    await send(world, PNG, "first.png", "image/png")
    await world.say(ROOM, "and now?")
    await world.settle()

    (earlier,) = backend.calls[-1].history[0].attachments
    assert (earlier.data is not None) is again


async def test_an_image_sent_while_down_is_answered_and_a_wiped_context_keeps_its_reference(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    await world.store.turns.add_answered(ROOM, [NewTurn("$earlier", "user", "earlier")])
    evt = world.fake.media_message(ROOM, PNG, "down.png", "image/png", age=30)

    await world.parts.startup.catch_up.run()
    await world.settle()
    assert bytes(backend.calls[0].attachments[0].data) == PNG
    await world.store.turns.clear(ROOM)
    await world.parts.startup.catch_up.run()

    turns = await world.store.turns.of_room(ROOM)
    (ref,) = from_json(next(t for t in turns if t.event_id == evt.event_id).attachments)
    assert ref.mxc == evt.content.url


async def test_an_encrypted_image_is_decrypted_for_the_agent(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    world.fake.crypto = object()
    world.fake.rooms[ROOM].state[("m.room.encryption", "")] = {"algorithm": "m.megolm.v1"}
    ciphertext, info = encrypt_attachment(PNG)
    mxc = world.fake.add_media(ciphertext)
    file = {**info.serialize(), "url": mxc}
    await deliver(
        world, world.fake.message(ROOM, "secret.png", msgtype="m.image", extra={"file": file})
    )

    assert bytes(backend.calls[0].attachments[0].data) == PNG
    sent = [s for s in world.fake.sent if s.room_id == ROOM]
    assert all(s.type == "m.room.encrypted" for s in sent)


class HttpWorld:
    """A world whose agents and speech endpoints are the local fake servers, over HTTP."""

    def __init__(self, store: Store, config: dict[str, Any]) -> None:
        self.store = store
        self.config = config

    async def __aenter__(self) -> World:
        self.http = aiohttp.ClientSession()
        self.world = make_world(self.store, self.http, {**CONFIG, **self.config}, FakeMatrix())
        return self.world

    async def __aexit__(self, *_: object) -> None:
        await self.world.close()
        await self.http.close()


def talker(server: FakeOpenAI) -> dict[str, Any]:
    """An openai agent of the fake server, which is its speech server too."""
    endpoint = {"base_url": server.base_url, "api_key": "k", "model": "m"}
    agent = server.agent("talker", stream=False)
    return {
        "agents": [agent],
        "default_agent": "talker",
        "speech.transcribe": endpoint,
        "speech.speak": endpoint,
    }


async def test_a_voice_message_is_transcribed_told_and_answered(
    store: Store, openai_server: FakeOpenAI
) -> None:
    voice = b"OggS" + bytes(500)
    async with HttpWorld(store, talker(openai_server)) as world:
        await world.add_room(ROOM, agent_id="talker")
        extra = {"org.matrix.msc3245.voice": {}}
        evt = await send(
            world, voice, "Voice message.ogg", "audio/ogg", msgtype="m.audio", extra=extra
        )

        (sent,) = openai_server.audio.transcriptions
        assert sent["file"] == voice and sent["model"] == "m"
        transcript = openai_server.audio.transcript
        (request,) = openai_server.requests
        assert request.body["messages"][-1] == {"role": "user", "content": transcript}
        heard, _ = replies_to(world, evt.event_id)
        assert heard[ASIDE_KEY] is True and transcript in heard["body"]
        assert world.fake.final_texts(ROOM)[evt.event_id] == f"reply to: {transcript}"
        (turn,) = await user_turns(store)
        assert turn.content == transcript and turn.answered


async def test_without_transcription_a_voice_message_gets_a_notice(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)

    evt = await send(world, b"OggS", "v.ogg", "audio/ogg", msgtype="m.audio")

    assert backend.calls == []
    assert "Voice messages are not set up" in replies_to(world, evt.event_id)[0]["body"]


async def test_voice_on_speaks_the_answers_as_voice_messages(
    store: Store, openai_server: FakeOpenAI
) -> None:
    async with HttpWorld(store, talker(openai_server)) as world:
        await world.add_room(ROOM, agent_id="talker")
        await world.command(ROOM, "voice on")
        assert (await world.room(ROOM)).voice
        binding = world.fake.account_data[(ROOM, "org.agentspaces.room")]
        assert binding["voice"] is True, "Matrix first"

        evt = await world.say(ROOM, "say hi")
        await world.settle()

        (spoken,) = openai_server.audio.speeches
        assert spoken["input"] == "reply to: say hi" and spoken["response_format"] == "opus"
        audio, _ = replies_to(world, evt.event_id)
        assert audio["msgtype"] == "m.audio" and "org.matrix.msc3245.voice" in audio
        assert audio[CONTINUED_KEY] is True, "the text's final edit answers the message"
        assert world.fake.media[audio["url"]] == openai_server.audio.speech
        assert world.fake.final_texts(ROOM)[evt.event_id] == "reply to: say hi"


async def test_an_http_agent_answers_with_files_as_json_and_as_events(
    store: Store, agent_server: FakeAgentPlatform
) -> None:
    encoded = base64.b64encode(PNG).decode()
    files = [{"mimetype": "image/png", "name": "chart.png", "data_base64": encoded}]
    agent = agent_server.agent("hook")
    async with HttpWorld(store, {"agents": [agent], "default_agent": "hook"}) as world:
        await world.add_room(ROOM, agent_id="hook")
        agent_server.script(Behavior(attachments=files), Behavior(chunks=2, attachments=files))
        for text in ("as json", "as events"):
            evt = await world.say(ROOM, text)
            await world.settle()

            # A streamed answer's text shows first; its final edit comes after the file.
            (image,) = [c for c in replies_to(world, evt.event_id) if c["msgtype"] == "m.image"]
            assert image["filename"] == "chart.png" and image[CONTINUED_KEY] is True
            assert world.fake.media[image["url"]] == PNG
            assert world.fake.final_texts(ROOM)[evt.event_id] == f"platform reply to: {text}"
        assistant = [t for t in await store.turns.of_room(ROOM) if t.role == "assistant"]
        assert [from_json(t.attachments)[0].name for t in assistant] == ["chart.png"] * 2


async def test_the_openai_image_backend_answers_with_an_image(
    store: Store, openai_server: FakeOpenAI
) -> None:
    agent = {**openai_server.agent("painter"), "backend": "openai_image", "size": "256x256"}
    async with HttpWorld(store, {"agents": [agent], "default_agent": "painter"}) as world:
        await world.add_room(ROOM, agent_id="painter")

        evt = await world.say(ROOM, "a red square")
        await world.settle()

        (generation,) = openai_server.audio.generations
        assert generation["prompt"] == "a red square" and generation["size"] == "256x256"
        (image,) = replies_to(world, evt.event_id)
        assert image["msgtype"] == "m.image" and CONTINUED_KEY not in image, "the answer itself"
        assert world.fake.media[image["url"]] == openai_server.audio.image
        assert (await world.store.messages.get(evt.event_id)).state == "answered"


async def test_files_the_bot_posts_in_an_encrypted_room_are_encrypted(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    backend.files = [OutFile("image/png", "out.png", PNG)]
    world.fake.crypto = object()
    world.fake.rooms[ROOM].state[("m.room.encryption", "")] = {"algorithm": "m.megolm.v1"}

    await world.say(ROOM, "draw")
    await world.settle()

    image = next(
        json.loads(s.content["ciphertext"])["content"]
        for s in world.fake.sent
        if "m.image" in s.content.get("ciphertext", "")
    )
    file = image["file"]
    assert "url" not in image and world.fake.media[file["url"]] != PNG
    ciphertext = world.fake.media[file["url"]]
    assert (
        decrypt_attachment(ciphertext, file["key"]["k"], file["hashes"]["sha256"], file["iv"])
        == PNG
    )


async def test_a_body_with_blobs_streams_the_same_json() -> None:
    blobs = Blobs()
    data = bytes(range(256)) * 700
    body = {"a": [f"data:x;base64,{blobs.ref(data)}"], "b": blobs.ref(b"xy")}

    pieces, size = blobs.encode(body)
    streamed = b"".join([chunk async for chunk in blobs.stream(pieces)])

    assert len(streamed) == size
    expected = {"a": [f"data:x;base64,{base64.b64encode(data).decode()}"], "b": "eHk="}
    assert json.loads(streamed) == expected


def test_an_aside_answers_nothing_and_file_parts_are_not_taken_over() -> None:
    from plugin.matrix.replies import resolve

    bot = "@bot:example.org"

    def reply(event_id: str, **content: Any) -> dict[str, Any]:
        relates = {"m.in_reply_to": {"event_id": "$user"}}
        return {
            "event_id": event_id,
            "sender": bot,
            "content": {**content, "m.relates_to": relates},
        }

    aside = reply("$aside", msgtype="m.notice", body="I heard", **{ASIDE_KEY: True})
    image = reply("$img", msgtype="m.image", body="x.png", **{CONTINUED_KEY: True})
    streaming = reply("$text", msgtype="m.text", body="Hal", **{"org.agentspaces.streaming": True})

    timeline = resolve([aside, image, streaming], bot)

    assert not timeline.answered("$user")
    assert timeline.interrupted("$user") == ["$text"]


async def test_a_file_larger_than_an_event_stream_line_arrives_whole(
    agent_server: FakeAgentPlatform,
) -> None:
    big = bytes(range(256)) * 4096
    files = [{"mimetype": "application/zip", "name": "big.zip", "data_base64": b64(big)}]
    agent_server.script(Behavior(chunks=2, attachments=files))
    agent = agent_settings(agent_server.agent())
    request = AgentRequest(agent, "c", ROOM, "@a:example.org", "$e", "hi", "", (), ())

    async with aiohttp.ClientSession() as http:
        deltas = [d async for d in HttpBackend(http).reply(request)]

    (file,) = [d for d in deltas if isinstance(d, OutFile)]
    assert len(b64(big)) > 512 * 1024, "more than aiohttp's line reader takes"
    assert (file.name, bytes(file.data)) == ("big.zip", big)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"speech.transcribe": "yes"}, "speech.transcribe: must be a mapping"),
        ({"speech.speak.base_url": "ftp://x"}, "speech.speak.base_url: must start with http"),
        ({"attachments.max_bytes": 0}, "attachments.max_bytes: must be at least 1"),
        ({"agents": [{"id": "p", "backend": "openai_image"}]}, "agents[0].base_url: is required"),
    ],
)
def test_media_config_mistakes_name_their_key(overrides: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        settings({"default_agent": "p", **overrides} if "agents" in overrides else overrides)
    assert any(p.startswith(problem) for p in raised.value.problems), raised.value.problems


async def test_a_failed_transcription_is_told_and_a_retry_transcribes_it(
    store: Store, openai_server: FakeOpenAI
) -> None:
    async with HttpWorld(store, talker(openai_server)) as world:
        await world.add_room(ROOM, agent_id="talker")
        openai_server.audio.fail.append(500)

        evt = await send(world, b"OggS" + bytes(99), "v.ogg", "audio/ogg", msgtype="m.audio")
        (notice,) = replies_to(world, evt.event_id)
        assert (
            "could not be transcribed: the transcription server failed (HTTP 500)"
            in (notice["body"])
        )
        await world.command(ROOM, "retry")
        await world.settle()

        _, heard, answer = replies_to(world, evt.event_id)
        assert heard[ASIDE_KEY] is True, "what it heard replies to the voice message"
        assert answer["body"] == f"reply to: {openai_server.audio.transcript}"
        (turn,) = await user_turns(store)
        assert turn.content == openai_server.audio.transcript and turn.answered
        assert from_json(turn.attachments)[0].inlined


async def test_a_text_file_too_long_to_inline_goes_to_http_agents_as_a_file(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(
        world, monkeypatch, agent="hook", **{"attachments.inline_text_chars": 10}
    )
    text = b"0123456789" * 10

    await send(world, text, "long.txt", "text/plain", msgtype="m.file")
    await world.command(ROOM, "use plain")
    refused = await send(world, text, "long.txt", "text/plain", msgtype="m.file")

    (call,) = backend.calls
    assert call.text == "" and bytes(call.attachments[0].data) == text
    assert (
        "`long.txt` has more than 10 characters" in replies_to(world, refused.event_id)[0]["body"]
    )
    # Its size says it cannot be inlined: it was downloaded once, for the http agent.
    assert world.fake.media_streamed == len(text)


async def test_openai_messages_send_images_and_pdfs_as_parts_and_older_files_as_labels() -> None:
    agent = agent_settings({**AGENTS[1], "pdf": True})
    old = Attachment("image", "image/png", "old.png", 3, "mxc://x/old")
    again = Attachment("image", "image/png", "new.png", 3, "mxc://x/new", data=b"new")
    pdf = Attachment("file", "application/pdf", "a.pdf", 4, "mxc://x/pdf", data=b"%PDF")
    history = (
        Turn("user", "look", attachments=(old,)),
        Turn("assistant", "ok"),
        Turn("user", "", attachments=(again,)),
    )
    request = AgentRequest(agent, "c", ROOM, "@a:x", "$e", "read it", "", (), history)
    request = attrs.evolve(request, attachments=(pdf,))
    blobs = Blobs()

    pieces, _ = blobs.encode({"messages": openai.messages(request, blobs)})
    sent = json.loads(b"".join([chunk async for chunk in blobs.stream(pieces)]))["messages"]

    assert sent[0] == {"role": "user", "content": "look\n[image: old.png]"}
    new_url = f"data:image/png;base64,{b64(b'new')}"
    assert sent[2]["content"] == [{"type": "image_url", "image_url": {"url": new_url}}]
    pdf_url = f"data:application/pdf;base64,{b64(b'%PDF')}"
    assert sent[3]["content"] == [
        {"type": "text", "text": "read it"},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": pdf_url}},
    ]


async def test_a_type_the_agent_cannot_take_gets_a_notice(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch, agent="plain")

    evt = await send(world, b"PK\x03\x04", "a.zip", "application/zip", msgtype="m.file")

    assert backend.calls == []
    (notice,) = replies_to(world, evt.event_id)
    assert (
        "Plain cannot take `application/zip` files, so `a.zip` did not go to it."
        in (notice["body"])
    )
    assert "Agents that can: Hook" in notice["body"]


async def test_voice_answers_need_speech_and_turn_off(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await prepare(world, monkeypatch)

    await world.command(ROOM, "voice on")
    world.configure({**CONFIG, "speech.speak.base_url": "http://127.0.0.1:9/v1"})
    await world.command(ROOM, "voice on")
    await world.command(ROOM, "voice off")

    first, on, off = (body for body in world.fake.bodies(ROOM))
    assert "not set up on this bot" in first
    assert on.startswith("Voice is on") and off.startswith("Voice is off")
    assert not (await world.room(ROOM)).voice


async def test_without_the_crypto_packages_an_encrypted_file_gets_a_notice(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await prepare(world, monkeypatch)
    monkeypatch.setattr(crypto, "decrypt_attachment", None)
    ciphertext, info = encrypt_attachment(PNG)
    file = {**info.serialize(), "url": world.fake.add_media(ciphertext)}
    evt = world.fake.message(ROOM, "secret.png", msgtype="m.image", extra={"file": file})

    notice = await refused(world, backend, evt)
    assert "could not be decrypted: this bot has no encryption support" in notice
