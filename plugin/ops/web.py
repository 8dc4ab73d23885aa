"""The plugin's web pages: `/status` for people and `/metrics` for Prometheus.

Both need the instance's `web.token`, as `Authorization: Bearer <token>` or `?token=<token>`.
Everything shown comes from the plugin's own state, HTML-escaped: user names, room titles and
error messages are user-controlled text.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from html import escape

from aiohttp import web
from attrs import define
from maubot.handlers import web as handlers

from ..db import Store
from ..db.rows import ACTIVE, RoomRow
from ..startup.catchup import CatchUpReport
from ..startup.reconcile import ReconcileReport
from .metrics import Metrics
from .settings import Settings

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_ROWS = 500
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
}


def authorized(request: web.Request, token: str) -> bool:
    if not token:
        # An instance without a token shows nothing rather than everything.
        return False
    header = request.headers.get("Authorization", "")
    given = header[7:].strip() if header[:7].lower() == "bearer " else ""
    given = given or request.query.get("token", "")
    return hmac.compare_digest(given.encode(), token.encode())


def unauthorized() -> web.Response:
    return web.Response(
        status=401,
        text="401: send the instance's web.token as 'Authorization: Bearer <token>' or ?token=\n",
        headers={"WWW-Authenticate": 'Bearer realm="agent-spaces"', **_SECURITY_HEADERS},
    )


@define(eq=False)
class StatusPages:
    """The web handlers, registered with maubot as a handler class."""

    bot_id: str
    store: Store
    metrics: Metrics
    settings: Callable[[], Settings]
    queue_depth: Callable[[], int]
    last_report: Callable[[], ReconcileReport | None]
    config_status: Callable[[], str]
    last_catch_up: Callable[[], CatchUpReport | None]

    @handlers.get("/metrics")
    async def metrics_page(self, request: web.Request) -> web.Response:
        return await self._guarded(request, self._metrics)

    @handlers.get("/status")
    async def status_page(self, request: web.Request) -> web.Response:
        return await self._guarded(request, self._status)

    async def _guarded(
        self, request: web.Request, page: Callable[[], Awaitable[web.Response]]
    ) -> web.Response:
        if not authorized(request, self.settings().web_token):
            return unauthorized()
        return await page()

    async def _metrics(self) -> web.Response:
        body = self.metrics.render(self.queue_depth())
        return web.Response(
            body=body.encode(), headers={"Content-Type": PROMETHEUS_TYPE, **_SECURITY_HEADERS}
        )

    async def _status(self) -> web.Response:
        html = await self.render_status()
        return web.Response(
            text=html, content_type="text/html", charset="utf-8", headers=_SECURITY_HEADERS
        )

    async def render_status(self) -> str:
        users = await self.store.users.all()
        rooms = await self.store.rooms.all()
        rooms_by_owner: dict[str, int] = {}
        for room in rooms:
            if room.state == ACTIVE:
                rooms_by_owner[room.owner] = rooms_by_owner.get(room.owner, 0) + 1
        user_rows = [
            (user.user_id, user.space_id or "-", str(rooms_by_owner.get(user.user_id, 0)))
            for user in users
        ]
        errors = [
            (_when(error.at), error.kind, error.message)
            for error in reversed(self.metrics.recent_errors)
        ]
        return _PAGE.format(
            generated=escape(_when(time.time())),
            summary=_definition_list(self._summary(len(users), rooms)),
            agents=_table(("Agent", "Name", "Backend", "Health", "Replies", ""), self._agents()),
            users=_table(("User", "Space", "Active rooms"), user_rows),
            rooms=_table(
                ("Room", "Title", "Owner", "Agent", "State", "Shared memory", "Last message"),
                [_room_cells(room) for room in rooms],
            ),
            errors=_table(("When", "Kind", "Message"), errors, empty="No errors."),
        )

    def _summary(self, users: int, rooms: list[RoomRow]) -> list[tuple[str, str]]:
        states: dict[str, int] = {}
        for room in rooms:
            states[room.state] = states.get(room.state, 0) + 1
        report, catch_up = self.last_report(), self.last_catch_up()
        metrics = self.metrics
        return [
            ("Bot", self.bot_id),
            ("Config", self.config_status()),
            ("Users", str(users)),
            ("Rooms", ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "0"),
            ("Queue depth", str(self.queue_depth())),
            ("Last reconciliation", report.summary() if report else "not run yet"),
            ("Last catch-up", catch_up.summary() if catch_up else "not run yet"),
            ("Messages in / out", f"{metrics.messages_in} / {metrics.messages_out}"),
            ("Undecryptable messages", str(metrics.undecryptable_messages)),
            ("Matrix errors", str(metrics.errors_by_kind.get("matrix", 0))),
        ]

    def _agents(self) -> list[tuple[str, ...]]:
        settings = self.settings()
        return [
            (
                agent.id,
                agent.name,
                agent.backend,
                self.metrics.agent_health.get(agent.id, "no calls yet"),
                str(self.metrics.replies_by_agent.get(agent.id, 0)),
                "default" if agent.id == settings.default_agent else "",
            )
            for agent in settings.agents.values()
        ]


def _room_cells(room: RoomRow) -> tuple[str, ...]:
    return (
        room.room_id,
        room.title,
        room.owner,
        room.agent_id,
        room.state,
        "on" if room.share_memory else "off",
        _when(room.last_event_ts / 1000) if room.last_event_ts else "-",
    )


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def _definition_list(items: list[tuple[str, str]]) -> str:
    rows = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in items)
    return f"<dl>{rows}</dl>"


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]], empty: str = "None yet.") -> str:
    if not rows:
        return f"<p class=empty>{escape(empty)}</p>"
    shown = rows[:MAX_ROWS]
    header = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in row) + "</tr>" for row in shown
    )
    more = (
        f"<p class=empty>… and {len(rows) - len(shown)} more.</p>" if len(rows) > len(shown) else ""
    )
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>{more}"


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Agent Spaces status</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #1d2330; background: #f7f8fa; }}
h1 {{ font-size: 1.5rem; margin-bottom: 0; }}
h2 {{ font-size: 1.1rem; margin-top: 2rem; border-bottom: 1px solid #d5d9e0; }}
.generated {{ color: #667; margin-top: .25rem; }}
dl {{ display: grid; grid-template-columns: max-content auto; gap: .3rem 1.5rem; }}
dt {{ font-weight: 600; }} dd {{ margin: 0; }}
table {{ border-collapse: collapse; width: 100%; background: #fff; font-size: .9rem; }}
th, td {{ text-align: left; padding: .35rem .6rem; border-bottom: 1px solid #e3e6eb; }}
th {{ background: #eef0f4; }}
td {{ overflow-wrap: anywhere; }}
.empty {{ color: #667; font-style: italic; }}
</style>
</head>
<body>
<h1>Agent Spaces</h1>
<p class="generated">Status at {generated}</p>
<h2>Summary</h2>
{summary}
<h2>Agents</h2>
{agents}
<h2>Users</h2>
{users}
<h2>Rooms</h2>
{rooms}
<h2>Recent errors</h2>
{errors}
</body>
</html>
"""
