"""/status and /metrics of a live instance, as an operator's browser and Prometheus reach them."""

from __future__ import annotations

import aiohttp
from ruamel.yaml import YAML

from tests.harness.deploy import Deployment
from tests.harness.flows import onboard


async def web_token(bot: Deployment) -> str:
    """The token the instance generated at its first start, as the admin UI shows it."""
    config = YAML(typ="safe").load((await bot.instance())["config"])
    return config["web"]["token"]


def page_url(bot: Deployment, page: str) -> str:
    return f"{bot.server.url}/_matrix/maubot/plugin/{bot.instance_id}/{page}"


async def fetch(url: str, **kwargs: object) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as http, http.get(url, **kwargs) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def test_pages_need_the_token(bot: Deployment) -> None:
    token = await web_token(bot)
    assert len(token) >= 24, "web.token is generated at first start and saved in the config"
    for page in ("status", "metrics"):
        url = page_url(bot, page)
        status, _, _ = await fetch(url)
        assert status == 401, f"/{page} without a token"
        status, _, _ = await fetch(url, headers={"Authorization": "Bearer wrong"})
        assert status == 401, f"/{page} with a wrong token"
        status, _, _ = await fetch(url, params={"token": token[:-1]})
        assert status == 401, f"/{page} with a truncated token"
        status, _, _ = await fetch(url, headers={"Authorization": f"Bearer {token}"})
        assert status == 200, f"/{page} with the bearer token"
        status, _, _ = await fetch(url, params={"token": token})
        assert status == 200, f"/{page} with ?token="
    assert token not in bot.server.log_text(), "the web token is never logged"


async def test_status_shows_users_rooms_agents_and_errors(bot: Deployment, make_user) -> None:
    token = await web_token(bot)
    alice = await make_user("alice")
    onboarded = await onboard(alice, bot)
    # A rejected config change is one of the recent errors an operator should see.
    await bot.update_config({"default_agent": "ghost"})

    status, content_type, html = await fetch(
        page_url(bot, "status"), headers={"Authorization": f"Bearer {token}"}
    )

    assert status == 200
    assert content_type.startswith("text/html")
    assert "<h1>Agent Spaces</h1>" in html
    assert bot.bot_id in html
    assert f"<td>{alice.user_id}</td><td>{onboarded.space_id}</td><td>1</td>" in html, (
        "the onboarded user is listed with their Space and one active room"
    )
    assert f"<td>{onboarded.rooms['echo']}</td>" in html, "the working room is listed"
    assert "<dt>Rooms</dt><dd>1 active</dd>" in html
    assert "<td>echo</td><td>Echo</td><td>echo</td>" in html, "the echo agent is listed"
    for section in ("Summary", "Agents", "Users and rooms", "Recent errors"):
        assert f"<h2>{section}</h2>" in html
    assert "<h3>Users</h3>" in html and "<h3>Rooms</h3>" in html
    assert "<dt>Queue depth</dt><dd>0</dd>" in html
    assert "<dt>Last reconciliation</dt>" in html
    assert "default_agent: &#x27;ghost&#x27; is not one of the agents" in html


async def test_metrics_in_prometheus_format(bot: Deployment, make_user) -> None:
    token = await web_token(bot)
    alice = await make_user("alice")
    onboarded = await onboard(alice, bot)
    reply = await alice.ask(onboarded.rooms["echo"], "count me", bot.bot_id, timeout=30)
    assert "count me" in reply.body
    await bot.update_config({"dispatch.max_concurrency": "lots"})

    status, content_type, text = await fetch(
        page_url(bot, "metrics"), headers={"Authorization": f"Bearer {token}"}
    )

    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    for name, kind in (
        ("messages_in_total", "counter"),
        ("messages_out_total", "counter"),
        ("replies_total", "counter"),
        ("errors_total", "counter"),
        ("backend_latency_seconds", "histogram"),
        ("queue_depth", "gauge"),
        ("reconcile_duration_seconds", "gauge"),
        ("reconcile_items", "gauge"),
    ):
        assert f"# TYPE agentspaces_{name} {kind}" in text, name
    assert 'agentspaces_errors_total{kind="config"} 1' in text
    assert 'agentspaces_replies_total{agent="echo"} 1' in text
    assert "agentspaces_messages_in_total 1" in text
    assert "agentspaces_backend_latency_seconds_count 1" in text
    assert 'agentspaces_backend_latency_seconds_bucket{le="+Inf"}' in text
