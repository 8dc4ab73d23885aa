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
from urllib.parse import urlencode

from aiohttp import web
from attrs import define
from maubot.handlers import web as handlers

from ..db import Store
from ..startup.catchup import CatchUpReport
from ..startup.reconcile import ReconcileReport
from .metrics import Metrics
from .settings import Settings
from .status_html import (
    PAGE,
    PAGE_ROWS,
    definition_list,
    pager,
    room_cells,
    search_form,
    table,
    when,
)

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_SEARCH = 200
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
        self, request: web.Request, page: Callable[[web.Request], Awaitable[web.Response]]
    ) -> web.Response:
        if not authorized(request, self.settings().web_token):
            return unauthorized()
        return await page(request)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = self.metrics.render(self.queue_depth())
        return web.Response(
            body=body.encode(), headers={"Content-Type": PROMETHEUS_TYPE, **_SECURITY_HEADERS}
        )

    async def _status(self, request: web.Request) -> web.Response:
        search = request.query.get("q", "").strip()[:MAX_SEARCH]
        try:
            page = max(1, int(request.query.get("page", "1")))
        except ValueError:
            page = 1
        html = await self.render_status(search, page, _carried(request))
        return web.Response(
            text=html, content_type="text/html", charset="utf-8", headers=_SECURITY_HEADERS
        )

    async def render_status(self, search: str = "", page: int = 1, carried: str = "") -> str:
        """The summary, then one page of the users and the rooms that match `search`: a big
        deployment's page stays small and quick (counts and pages come from the DB)."""
        offset = (page - 1) * PAGE_ROWS
        users = await self.store.users.page(search, offset, PAGE_ROWS)
        rooms = await self.store.rooms.page(search, offset, PAGE_ROWS)
        matching = max(
            await self.store.users.count_matching(search),
            await self.store.rooms.count_matching(search),
        )
        errors = [
            (when(error.at), error.kind, error.message)
            for error in reversed(self.metrics.recent_errors)
        ]
        return PAGE.format(
            generated=escape(when(time.time())),
            summary=definition_list(await self._summary()),
            agents=table(("Agent", "Name", "Backend", "Health", "Replies", ""), self._agents()),
            search=search_form(search, carried),
            pages=pager(search, page, matching, carried),
            users=table(
                ("User", "Space", "Active rooms"),
                [(user.user_id, user.space_id or "-", str(count)) for user, count in users],
            ),
            rooms=table(
                ("Room", "Title", "Owner", "Agent", "State", "Shared memory", "Last message"),
                [room_cells(room) for room in rooms],
            ),
            errors=table(("When", "Kind", "Message"), errors, empty="No errors."),
        )

    async def _summary(self) -> list[tuple[str, str]]:
        states = await self.store.rooms.count_by_state()
        report, catch_up = self.last_report(), self.last_catch_up()
        metrics = self.metrics
        return [
            ("Bot", self.bot_id),
            ("Config", self.config_status()),
            ("Users", str(await self.store.users.count())),
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


def _carried(request: web.Request) -> str:
    """The token, when it came in the query: the page's links and search keep it."""
    token = request.query.get("token")
    return urlencode({"token": token}) if token else ""
