"""The /status and /metrics pages: content, escaping and the token check, without a server."""

from __future__ import annotations

from html import escape

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from plugin.db import Store
from plugin.db.rows import RoomRow
from plugin.ops.metrics import Metrics
from plugin.ops.web import StatusPages, authorized
from plugin.startup.catchup import CatchUpReport
from plugin.startup.reconcile import ReconcileReport
from tests.config import settings

EVIL = "<script>alert(1)</script>"
OWNER = f"@{EVIL}:example.org"
TOKEN = "tok-123"
SETTINGS = settings(
    {
        "agents": [
            {"id": "echo", "name": "Echo", "backend": "echo"},
            {
                "id": "gpt",
                "name": "GPT",
                "backend": "openai",
                "base_url": "http://127.0.0.1:1/v1",
                "api_key": "sk-never-shown",
            },
            {"id": "idle", "name": "Idle", "backend": "echo"},
        ],
        "web.token": TOKEN,
    }
)


def room_row(room_id: str, owner: str, title: str) -> RoomRow:
    return RoomRow(
        room_id=room_id,
        owner=owner,
        space_id=None,
        agent_id="echo",
        chat_id="c",
        title=title,
        context_start=None,
        share_memory=True,
        state="active",
        moved_to=None,
        last_event_id=None,
        last_event_ts=0,
        created_at=0,
    )


async def pages(
    store: Store,
    queue_depth: int = 0,
    report: ReconcileReport | None = None,
    catch_up: CatchUpReport | None = None,
    metrics: Metrics | None = None,
) -> StatusPages:
    """The pages over a store with one user and one room, whose names try to inject HTML."""
    await store.users.upsert(OWNER, "!space:example.org")
    await store.rooms.upsert(
        RoomRow(
            room_id="!room:example.org",
            owner=OWNER,
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
    )
    metrics = metrics or Metrics()
    metrics.reply("echo", 0.1)
    metrics.error("backend", f"HTTP 502 from {EVIL}", agent_id="gpt")
    return StatusPages(
        "@bot:example.org",
        store,
        metrics,
        lambda: SETTINGS,
        lambda: queue_depth,
        lambda: report,
        lambda: "valid",
        lambda: catch_up,
    )


async def test_status_shows_everything_escaped(store: Store) -> None:
    html = await (await pages(store)).render_status()
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


async def test_status_shows_the_last_report_and_the_queue(store: Store) -> None:
    report = ReconcileReport(spaces=1, rooms=3, duration=0.2, finished=True)
    html = await (await pages(store, queue_depth=7, report=report)).render_status()
    assert f"<dt>Last reconciliation</dt><dd>{report.summary()}</dd>" in html
    assert "rooms=3" in report.summary()
    assert "<dt>Queue depth</dt><dd>7</dd>" in html


async def test_status_counts_undecryptable_messages_and_shows_the_catch_up(store: Store) -> None:
    metrics = Metrics()
    metrics.undecryptable()
    metrics.undecryptable()
    catch_up = CatchUpReport(rooms_checked=2, undecryptable=1, rebuilt=1, unreadable=3)
    status = await pages(store, catch_up=catch_up, metrics=metrics)

    html = await status.render_status()
    response = await status.metrics_page(make_mocked_request("GET", "/metrics?token=tok-123"))

    assert "<dt>Undecryptable messages</dt><dd>2</dd>" in html
    assert f"<dt>Last catch-up</dt><dd>{escape(catch_up.summary())}</dd>" in html
    assert "undecryptable=1" in catch_up.summary()
    assert "3 encrypted events could not be decrypted" in catch_up.summary()
    assert isinstance(response, web.Response) and isinstance(response.body, bytes)
    assert b"\nagentspaces_undecryptable_total 2\n" in response.body


def test_token_by_header_or_query_only() -> None:
    def request(path: str, headers: dict[str, str] | None = None) -> web.Request:
        return make_mocked_request("GET", path, headers=headers or {})

    assert authorized(request("/status", {"Authorization": "Bearer tok-123"}), TOKEN)
    assert authorized(request("/status", {"Authorization": "bearer tok-123"}), TOKEN)
    assert authorized(request("/status?token=tok-123"), TOKEN)
    assert not authorized(request("/status"), TOKEN)
    assert not authorized(request("/status?token=tok-12"), TOKEN)
    assert not authorized(request("/status", {"Authorization": "Basic tok-123"}), TOKEN)
    # An empty token never opens the pages.
    assert not authorized(request("/status?token="), "")


async def test_pages_answer_401_without_the_token(store: Store) -> None:
    status = await pages(store, queue_depth=2)
    for page in (status.status_page, status.metrics_page):
        response = await page(make_mocked_request("GET", "/x"))
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    response = await status.metrics_page(make_mocked_request("GET", "/metrics?token=tok-123"))
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert isinstance(response, web.Response) and isinstance(response.body, bytes)
    assert b"agentspaces_queue_depth 2" in response.body
    response = await status.status_page(make_mocked_request("GET", "/status?token=tok-123"))
    assert response.status == 200
    assert response.content_type == "text/html"


async def test_a_big_deployment_is_summarised_and_listed_a_page_at_a_time(store: Store) -> None:
    status = await pages(store)
    async with store.transaction() as tx:
        for n in range(120):
            user = f"@user{n:03}:example.org"
            await tx.users.upsert(user, f"!space{n}:example.org")
            await tx.rooms.upsert(room_row(f"!r{n:03}:example.org", user, f"Notes {n:03}"))

    first = await status.render_status()
    second = await status.render_status(page=2, carried="token=tok-123")
    found = await status.render_status(search="NOTES 07")

    assert "<dd>121</dd>" in first and "121 active" in first, "the summary counts everything"
    assert "Page 1 of 3 (121 matching)" in first
    assert "@user000:example.org" in first and "@user060:example.org" not in first
    assert "@user060:example.org" in second and "@user000:example.org" not in second
    assert 'href="?page=3&amp;token=tok-123"' in second, "the links keep a token from the URL"
    assert "Page 1 of 1 (10 matching)" in found, "rooms titled Notes 070 to 079"
    assert "Notes 075" in found and "Notes 080" not in found


async def test_a_search_is_plain_text(store: Store) -> None:
    status = await pages(store)
    await store.rooms.upsert(room_row("!pct:example.org", "@a:example.org", "100% done"))
    await store.rooms.upsert(room_row("!x:example.org", "@a:example.org", "1000 done"))

    found = await status.render_status(search="100%")

    assert "100% done" in found and "1000 done" not in found, "% is not a wildcard"
