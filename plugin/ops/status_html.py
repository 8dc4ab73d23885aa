"""The HTML of the `/status` page: escaped tables, the search form and the page links."""

from __future__ import annotations

import time
from html import escape
from urllib.parse import parse_qsl, urlencode

from ..db.rows import RoomRow

# Users and rooms listed on one page of /status; a search narrows them down.
PAGE_ROWS = 50


def link(carried: str, **query: object) -> str:
    parts = [urlencode({k: v for k, v in query.items() if v not in ("", None)}), carried]
    return "?" + "&".join(part for part in parts if part)


def search_form(search: str, carried: str) -> str:
    hidden = "".join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">'
        for k, v in parse_qsl(carried)
    )
    return (
        f'<form method="get">{hidden}<input name="q" value="{escape(search)}" '
        'placeholder="user, room id or title"> <button>Search</button></form>'
    )


def pager(search: str, page: int, matching: int, carried: str) -> str:
    pages = max(1, -(-matching // PAGE_ROWS))
    links = [f"Page {page} of {pages} ({matching} matching)"]
    if page > 1:
        links.append(f'<a href="{escape(link(carried, q=search, page=page - 1))}">previous</a>')
    if page < pages:
        links.append(f'<a href="{escape(link(carried, q=search, page=page + 1))}">next</a>')
    return "<p>" + " · ".join(links) + "</p>"


def room_cells(room: RoomRow) -> tuple[str, ...]:
    return (
        room.room_id,
        room.title,
        room.owner,
        room.agent_id,
        room.state,
        "on" if room.share_memory else "off",
        when(room.last_event_ts / 1000) if room.last_event_ts else "-",
    )


def when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def definition_list(items: list[tuple[str, str]]) -> str:
    rows = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in items)
    return f"<dl>{rows}</dl>"


def table(head: tuple[str, ...], rows: list[tuple[str, ...]], empty: str = "None yet.") -> str:
    if not rows:
        return f"<p class=empty>{escape(empty)}</p>"
    header = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


PAGE = """<!doctype html>
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
<h2>Users and rooms</h2>
{search}
{pages}
<h3>Users</h3>
{users}
<h3>Rooms</h3>
{rooms}
<h2>Recent errors</h2>
{errors}
</body>
</html>
"""
