"""The /status page's content and the token check, without a server."""

from __future__ import annotations

from types import SimpleNamespace

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from plugin.config import AgentSettings
from plugin.db import RoomRow, UserRow
from plugin.metrics import Metrics
from plugin.web import authorized, metrics_page, render_status, status_page

EVIL = "<script>alert(1)</script>"


class FakeStore:
    async def all_users(self) -> list[UserRow]:
        return [UserRow(f"@{EVIL}:example.org", "!space:example.org", 0)]

    async def all_rooms(self) -> list[RoomRow]:
        return [
            RoomRow(
                room_id="!room:example.org",
                owner=f"@{EVIL}:example.org",
                space_id="!space:example.org",
                agent_id="echo",
                chat_id="c1",
                title=f"Plans {EVIL}",
                context_start=None,
                share_memory=True,
                state="active",
                moved_to=None,
                last_event_id=None,
                last_event_ts=1_700_000_000_000,
                created_at=0,
            )
        ]


def fake_plugin(**extra: object) -> SimpleNamespace:
    metrics = Metrics()
    metrics.reply("echo", 0.1)
    metrics.error("backend", f"HTTP 502 from {EVIL}", agent_id="gpt")
    agents = {
        "echo": AgentSettings(id="echo", name="Echo", description="", backend="echo"),
        "gpt": AgentSettings(
            id="gpt", name="GPT", description="", backend="openai", api_key="sk-never-shown"
        ),
        "idle": AgentSettings(id="idle", name="Idle", description="", backend="echo"),
    }
    settings = SimpleNamespace(agents=agents, default_agent="echo", web_token="tok-123")
    parts: dict[str, object] = {
        "settings": settings,
        "metrics": metrics,
        "store": FakeStore(),
        "client": SimpleNamespace(mxid="@bot:example.org"),
        "last_report": None,
        "dispatcher": SimpleNamespace(queue_depth=lambda: 0),
    }
    return SimpleNamespace(**{**parts, **extra})


async def test_status_shows_everything_escaped() -> None:
    html = await render_status(fake_plugin())
    assert EVIL not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "@bot:example.org" in html
    assert "Plans &lt;script&gt;" in html
    assert "!room:example.org" in html
    # Agents with their health: replied, failing, never called.
    assert "<td>echo</td><td>Echo</td><td>echo</td><td>ok</td><td>1</td><td>default</td>" in html
    assert "failing: HTTP 502 from &lt;script&gt;" in html
    assert "<td>idle</td><td>Idle</td><td>echo</td><td>no calls yet</td>" in html
    assert "not run yet" in html
    assert "<dt>Queue depth</dt><dd>0</dd>" in html
    assert "sk-never-shown" not in html


async def test_status_shows_the_last_report_and_the_queue() -> None:
    plugin = fake_plugin(
        last_report=SimpleNamespace(summary=lambda: "Reconciled 3 rooms in 0.2 s"),
        dispatcher=SimpleNamespace(queue_depth=lambda: 7),
    )
    html = await render_status(plugin)
    assert "<dt>Last reconciliation</dt><dd>Reconciled 3 rooms in 0.2 s</dd>" in html
    assert "<dt>Queue depth</dt><dd>7</dd>" in html


def test_token_by_header_or_query_only() -> None:
    def request(path: str, headers: dict[str, str] | None = None) -> web.Request:
        return make_mocked_request("GET", path, headers=headers or {})

    assert authorized(request("/status", {"Authorization": "Bearer tok-123"}), "tok-123")
    assert authorized(request("/status", {"Authorization": "bearer tok-123"}), "tok-123")
    assert authorized(request("/status?token=tok-123"), "tok-123")
    assert not authorized(request("/status"), "tok-123")
    assert not authorized(request("/status?token=tok-12"), "tok-123")
    assert not authorized(request("/status", {"Authorization": "Basic tok-123"}), "tok-123")
    # An empty token never opens the pages.
    assert not authorized(request("/status?token="), "")


async def test_pages_answer_401_without_the_token() -> None:
    plugin = fake_plugin()
    for page in (status_page, metrics_page):
        response = await page(plugin, make_mocked_request("GET", "/x"))
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    response = await metrics_page(plugin, make_mocked_request("GET", "/metrics?token=tok-123"))
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
