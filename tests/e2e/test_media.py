"""Pictures, files and voice, end to end: users upload files to Synapse and send them, the
agents are the local fakes, and what they received is compared byte for byte with the upload."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest

from tests.fakes.servers import Behavior, FakeAgentPlatform, FakeOpenAI, data_urls, text_of
from tests.harness.crypto_user import CryptoMatrixUser
from tests.harness.deploy import Deployment
from tests.harness.flows import agent_room, db_rows, delete_plugin_database, onboard
from tests.harness.matrix_user import MatrixUser, Reply

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(40_000)
FAILED = "org.agentspaces.failed"
ASIDE = "org.agentspaces.aside"


def data_url_bytes(url: str, mimetype: str = "image/png") -> bytes:
    prefix = f"data:{mimetype};base64,"
    assert url.startswith(prefix), url[:60]
    return base64.b64decode(url[len(prefix) :])


def last_user_message(server: FakeOpenAI) -> Any:
    return server.requests[-1].body["messages"][-1]["content"]


def by_msgtype(user: MatrixUser, room: str, event_id: str, bot: Deployment) -> dict[str, Reply]:
    """The bot's replies to a message by message type (a streamed text shows before the files
    that come with it; one that did not stream after them)."""
    return {r.content["msgtype"]: r for r in user.replies_to(room, event_id, bot.bot_id)}


async def answer(user: MatrixUser, room: str, event_id: str, bot: Deployment) -> Reply:
    return await user.wait_for_reply(room, event_id, bot.bot_id, timeout=30)


def speech(server: FakeOpenAI) -> dict[str, Any]:
    endpoint = {"base_url": server.base_url, "api_key": "test-key", "model": "fake"}
    return {"speech.transcribe": endpoint, "speech.speak": endpoint}


async def test_an_image_gets_a_notice_from_a_non_vision_agent_and_reaches_a_vision_one(
    bot: Deployment, make_user: Any, openai_server: FakeOpenAI
) -> None:
    agents = [openai_server.agent("plain"), openai_server.agent("seer", vision=True)]
    await bot.update_config({"agents": agents, "default_agent": "plain"})
    alice = await make_user("alice")
    room = (await onboard(alice, bot)).rooms["plain"]

    image = await alice.send_file(room, PNG, "cat.png", "image/png", caption="what is it?")
    notice = await answer(alice, room, image, bot)
    assert notice.content[FAILED] is True
    assert "Plain cannot see images" in notice.body and "Seer" in notice.body
    assert openai_server.requests == [], "nothing went to the agent"

    await alice.ask(room, "!ai use seer", bot.bot_id)
    await alice.send_text(room, "!ai retry")
    await alice.wait_for(lambda: len(alice.replies_to(room, image, bot.bot_id)) == 2, 30)

    content = last_user_message(openai_server)
    assert text_of(content) == "what is it?", "the caption is the message's text"
    (url,) = data_urls(content)
    assert data_url_bytes(url) == PNG, "the agent saw the uploaded bytes"
    assert alice.replies_to(room, image, bot.bot_id)[-1].body == "reply to: what is it?"


async def test_a_text_file_is_inlined(
    bot: Deployment, make_user: Any, openai_server: FakeOpenAI
) -> None:
    alice = await make_user("alice")
    room = await agent_room(alice, bot, openai_server.agent())
    csv = "name,score\nada,3\nbob,5\n"

    event_id = await alice.send_file(
        room, csv.encode(), "scores.csv", "text/csv", msgtype="m.file", caption="who won?"
    )
    await answer(alice, room, event_id, bot)

    assert last_user_message(openai_server) == (
        f"who won?\n\n--- scores.csv ---\n{csv}\n--- end of scores.csv ---"
    )


async def test_a_pdf_reaches_an_http_agent_as_base64(
    bot: Deployment, make_user: Any, agent_server: FakeAgentPlatform
) -> None:
    alice = await make_user("alice")
    room = await agent_room(alice, bot, agent_server.agent())
    pdf = b"%PDF-1.7\n" + os.urandom(30_000)

    event_id = await alice.send_file(room, pdf, "report.pdf", "application/pdf", msgtype="m.file")
    reply = await answer(alice, room, event_id, bot)

    (sent,) = agent_server.requests[0].body["attachments"]
    assert base64.b64decode(sent["data_base64"]) == pdf
    assert (sent["kind"], sent["mimetype"], sent["name"], sent["size"]) == (
        "file",
        "application/pdf",
        "report.pdf",
        len(pdf),
    )
    assert sent["mxc"].startswith("mxc://")
    assert reply.body == "platform reply to: "


async def test_a_voice_message_is_transcribed_for_the_agent_and_the_user(
    bot: Deployment, make_user: Any, openai_server: FakeOpenAI
) -> None:
    alice = await make_user("alice")
    room = await agent_room(alice, bot, openai_server.agent(), speech(openai_server))
    voice = b"OggS" + os.urandom(8_000)

    extra = {"org.matrix.msc3245.voice": {}, "org.matrix.msc1767.audio": {"duration": 1200}}
    event_id = await alice.send_file(
        room, voice, "Voice message.ogg", "audio/ogg", msgtype="m.audio", extra=extra
    )
    words = openai_server.audio.transcript
    await alice.wait_for(
        lambda: any(
            r.final and "reply to" in r.body for r in alice.replies_to(room, event_id, bot.bot_id)
        ),
        30,
        "the answer",
    )

    (transcription,) = openai_server.audio.transcriptions
    assert transcription["file"] == voice and transcription["model"] == "fake"
    assert last_user_message(openai_server) == words, "the transcript is the user's text"
    heard, reply = alice.replies_to(room, event_id, bot.bot_id)
    assert heard.content[ASIDE] is True and words in heard.body, "the user is told what it heard"
    assert reply.body == f"reply to: {words}"


async def test_voice_on_answers_with_an_audio_message_of_the_speech_output(
    bot: Deployment, make_user: Any, openai_server: FakeOpenAI
) -> None:
    alice = await make_user("alice")
    room = await agent_room(alice, bot, openai_server.agent(), speech(openai_server))

    assert "Voice is on" in (await alice.ask(room, "!ai voice on", bot.bot_id)).body
    event_id = await alice.send_text(room, "say something")
    await alice.wait_for(lambda: len(alice.replies_to(room, event_id, bot.bot_id)) == 2, 30)

    (spoken,) = openai_server.audio.speeches
    assert spoken["input"] == "reply to: say something"
    replies = by_msgtype(alice, room, event_id, bot)
    text, audio = replies["m.text"], replies["m.audio"]
    assert text.body == "reply to: say something" and text.final
    assert audio.content["msgtype"] == "m.audio"
    assert "org.matrix.msc3245.voice" in audio.content
    assert audio.content["info"]["mimetype"] == "audio/ogg"
    assert await alice.download(audio.content["url"]) == openai_server.audio.speech


async def test_an_http_agent_and_the_openai_image_backend_answer_with_images(
    bot: Deployment, make_user: Any, openai_server: FakeOpenAI, agent_server: FakeAgentPlatform
) -> None:
    painter = {"id": "painter", "backend": "openai_image", "base_url": openai_server.base_url}
    await bot.update_config(
        {"agents": [agent_server.agent(), painter], "default_agent": "platform"}
    )
    alice = await make_user("alice")
    room = (await onboard(alice, bot)).rooms["platform"]
    chart = b"\x89PNG\r\n\x1a\n" + os.urandom(20_000)
    encoded = base64.b64encode(chart).decode()
    agent_server.script(
        Behavior(
            attachments=[{"mimetype": "image/png", "name": "chart.png", "data_base64": encoded}]
        )
    )

    asked = await alice.send_text(room, "plot it")
    await alice.wait_for(lambda: len(alice.replies_to(room, asked, bot.bot_id)) == 2, 30)
    replies = by_msgtype(alice, room, asked, bot)
    image, text = replies["m.image"], replies["m.text"]
    assert image.content["msgtype"] == "m.image" and image.content["filename"] == "chart.png"
    assert await alice.download(image.content["url"]) == chart
    assert text.body == "platform reply to: plot it"

    await alice.ask(room, "!ai use painter", bot.bot_id)
    prompt = await alice.send_text(room, "a red square")
    painted = await answer(alice, room, prompt, bot)
    assert painted.content["msgtype"] == "m.image"
    assert await alice.download(painted.content["url"]) == openai_server.audio.image
    assert openai_server.audio.generations[0]["prompt"] == "a red square"


async def test_an_image_sent_while_the_bot_was_down_is_answered_after_the_start(
    bot: Deployment, make_user: Any, openai_server: FakeOpenAI
) -> None:
    alice = await make_user("alice")
    room = await agent_room(alice, bot, openai_server.agent(vision=True))

    await bot.stop()
    image = await alice.send_file(room, PNG, "offline.png", "image/png")
    await bot.start()
    reply = await answer(alice, room, image, bot)

    assert reply.body == "reply to: "
    (url,) = data_urls(last_user_message(openai_server))
    assert data_url_bytes(url) == PNG


async def test_an_image_reference_survives_a_database_wipe(
    bot: Deployment,
    make_user: Any,
    openai_server: FakeOpenAI,
    db_kind: str,
    request: pytest.FixtureRequest,
) -> None:
    alice = await make_user("alice")
    room = await agent_room(alice, bot, openai_server.agent(vision=True))
    image = await alice.send_file(room, PNG, "kept.png", "image/png", caption="remember this")
    await answer(alice, room, image, bot)

    await bot.stop()
    await delete_plugin_database(bot, db_kind, request)
    await bot.start()
    await alice.ask(room, "what was the picture?", bot.bot_id, timeout=30)

    earlier = openai_server.requests[-1].body["messages"][-3]
    assert text_of(earlier["content"]) == "remember this"
    (url,) = data_urls(earlier["content"])
    assert data_url_bytes(url) == PNG, "the newest image of the context, sent again"
    (turn,) = [
        t for t in await db_rows(bot, db_kind, request, "context_turn") if t["event_id"] == image
    ]
    assert "kept.png" in turn["attachments"] and "mxc://" in turn["attachments"]


async def test_an_oversized_file_gets_a_notice_and_is_answered_once_the_cap_is_raised(
    bot: Deployment, make_user: Any, openai_server: FakeOpenAI
) -> None:
    alice = await make_user("alice")
    agent = openai_server.agent(vision=True)
    room = await agent_room(alice, bot, agent, {"attachments.max_bytes": 10_000})

    image = await alice.send_file(room, PNG, "huge.png", "image/png")
    notice = await answer(alice, room, image, bot)
    assert "`huge.png` is larger than the 10000 bytes" in notice.body and notice.content[FAILED]
    assert openai_server.requests == []

    await bot.update_config({"agents": [agent], "default_agent": agent["id"]})
    await alice.send_text(room, "!ai retry")
    await alice.wait_for(lambda: len(alice.replies_to(room, image, bot.bot_id)) == 2, 30)
    (url,) = data_urls(last_user_message(openai_server))
    assert data_url_bytes(url) == PNG


async def test_an_image_in_an_encrypted_room(
    crypto_bot: Deployment, make_crypto_user: Any, openai_server: FakeOpenAI
) -> None:
    agent = openai_server.agent(vision=True)
    await crypto_bot.update_config(
        {"agents": [agent], "default_agent": agent["id"], **speech(openai_server)}
    )
    erin: CryptoMatrixUser = await make_crypto_user("erin")
    room = (await onboard(erin, crypto_bot)).rooms[agent["id"]]
    assert await erin.is_encrypted(room)
    await erin.ask(room, "!ai voice on", crypto_bot.bot_id)

    image = await erin.send_file(room, PNG, "secret.png", "image/png")
    await erin.wait_for(lambda: len(erin.replies_to(room, image, crypto_bot.bot_id)) == 2, 60)

    (url,) = data_urls(last_user_message(openai_server))
    assert data_url_bytes(url) == PNG, "decrypted for the agent"
    audio = by_msgtype(erin, room, image, crypto_bot)["m.audio"]
    assert "url" not in audio.content, "the bot's file is encrypted too"
    assert await erin.download_decrypted(audio.content["file"]) == openai_server.audio.speech
    assert erin.raw_types[audio.event_id] == "m.room.encrypted"
    assert not erin.crypto_errors
