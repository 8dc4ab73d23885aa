"""Exactly-once soak: user messages while maubot is SIGKILLed and restarted, judged by the user.

A real Synapse and a real maubot (the project's harness and the .mbp from `make build`), and the
fake OpenAI server streaming "reply to: <text>" in chunks, so that some answers are mid-stream
when a kill lands. Users send messages at a steady rate over many working rooms; maubot is
SIGKILLed (its plugin's stop() never runs) and started again at random moments. Afterwards the
rooms are read back with /messages as their owners, and every message is judged:

- LOST: no final bot reply.
- DUPLICATED: more than one final reply, or its answer's text in more than one bot message.
- INCOMPLETE: a reply still flagged streaming, or a final reply whose text (edits applied) is not
  exactly the expected answer.

A benchmark, not a test: losses are the measurement, so only a failing harness exits non-zero.
Sizes come from the constants below or the environment, e.g. a quick run:
    CHAOS_ROOMS=4 CHAOS_MESSAGES=40 CHAOS_KILLS=2 make bench ARGS=chaos
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attrs import define, field, frozen

from tests.config import ROOT
from tests.fakes.servers import Behavior, FakeOpenAI
from tests.harness.deploy import Deployment, deploy
from tests.harness.flows import onboard, room_links
from tests.harness.matrix_user import MatrixUser
from tests.harness.maubot_server import MaubotServer
from tests.harness.synapse import Synapse

ROOMS = 20  # CHAOS_ROOMS: working rooms in all, shared out among the users
USERS = 2  # CHAOS_USERS
MESSAGES = 500  # CHAOS_MESSAGES
KILLS = 10  # CHAOS_KILLS: SIGKILLs (each followed by a start) at random moments of the sending
RATE = 4.0  # CHAOS_RATE: messages per second, all rooms together
DEADLINE = 300.0  # CHAOS_DEADLINE: seconds after the last restart to wait for the answers
QUIET = 60.0  # CHAOS_QUIET: stop waiting early once nothing happened for this long
# CHAOS_SEED: the RNG seed (kill moments, message order); random when unset.
# CHAOS_KEEP=1: keep the temp dir (logs, databases) even after a successful run.

# About 1.5 s per answer, edited every 0.5 s: a kill often lands inside one.
CHUNKS = 6
CHUNK_DELAY = 0.25
EDIT_INTERVAL = 0.5
# Once every message has a final reply, how long nothing may change before the last read, so
# that a late duplicate is still seen.
GRACE = 10.0
POLL = 5.0
AGENT = "chaos"


@frozen
class Params:
    rooms: int
    users: int
    messages: int
    kills: int
    rate: float
    deadline: float
    quiet: float
    seed: int
    keep: bool

    @classmethod
    def from_env(cls) -> Params:
        env = os.environ.get
        rooms = int(env("CHAOS_ROOMS", ROOMS))
        seed = env("CHAOS_SEED")
        return cls(
            rooms=rooms,
            # Every user owns at least one room.
            users=max(1, min(int(env("CHAOS_USERS", USERS)), rooms)),
            messages=int(env("CHAOS_MESSAGES", MESSAGES)),
            kills=int(env("CHAOS_KILLS", KILLS)),
            rate=float(env("CHAOS_RATE", RATE)),
            deadline=float(env("CHAOS_DEADLINE", DEADLINE)),
            quiet=float(env("CHAOS_QUIET", QUIET)),
            seed=int(seed) if seed else random.SystemRandom().randrange(2**31),
            keep=env("CHAOS_KEEP") == "1",
        )


@define
class Sent:
    number: int
    room_id: str
    event_id: str
    text: str
    at: float

    @property
    def expected(self) -> str:
        return f"reply to: {self.text}"


@define
class Kill:
    at: float
    sent: int
    # Backend requests still streaming when the kill landed.
    streaming: int
    # Seconds from the kill until maubot's API answered again.
    back_after: float = 0.0


@define
class Audit:
    messages: int = 0
    exact: int = 0
    lost: list[str] = field(factory=list)
    duplicated: list[str] = field(factory=list)
    incomplete: list[str] = field(factory=list)
    # Lost messages whose only reply is a streamed one that never finished.
    lost_mid_stream: int = 0
    bot_messages: int = 0

    def verdict(self) -> str:
        return (
            f"lost={len(self.lost)} duplicated={len(self.duplicated)} "
            f"incomplete={len(self.incomplete)}"
        )


def judge(readers: dict[str, MatrixUser], bot_id: str, sent: list[Sent]) -> Audit:
    """Judges every message by the timelines the readers hold (the users' view)."""
    result = Audit(messages=len(sent))
    texts: dict[str, list[str]] = {}
    for room_id, reader in readers.items():
        texts[room_id] = [m.body for m in reader.messages_from(room_id, bot_id)]
        result.bot_messages += len(texts[room_id])
    for msg in sent:
        replies = readers[msg.room_id].replies_to(msg.room_id, msg.event_id, bot_id)
        finals = [r for r in replies if r.final]
        label = f"#{msg.number} {msg.event_id} ({msg.text!r}, sent at {msg.at:.1f} s)"
        if not finals:
            seen = "only an unfinished streamed reply" if replies else "no reply"
            result.lost.append(f"{label}: {seen}")
            result.lost_mid_stream += bool(replies)
        copies = texts[msg.room_id].count(msg.expected)
        if len(finals) > 1 or copies > 1:
            result.duplicated.append(f"{label}: {len(finals)} final replies, answer seen {copies}x")
        wrong = [r.body for r in finals if r.body != msg.expected]
        streaming = [r for r in replies if not r.final]
        if wrong or streaming:
            shown = (wrong or [streaming[0].body])[0][:80]
            result.incomplete.append(f"{label}: {len(streaming)} still streaming, shows {shown!r}")
        if len(replies) == 1 and finals and not wrong and copies == 1:
            result.exact += 1
    return result


class Cluster:
    """Synapse, maubot with the plugin deployed, the fake backend and the users' rooms."""

    def __init__(self, root: Path, params: Params) -> None:
        self.root = root
        self.params = params
        self.synapse = Synapse(root / "synapse")
        self.server: MaubotServer | None = None
        self.fake = FakeOpenAI(default=Behavior(chunks=CHUNKS, chunk_delay=CHUNK_DELAY))
        self.bot: Deployment | None = None
        # Every Matrix client opened here, to close them all.
        self.clients: list[MatrixUser] = []
        # room_id -> a user who owns it and syncs, and a reader with the same account that only
        # reads back /messages (its timeline is replaced wholesale on every read).
        self.owners: dict[str, MatrixUser] = {}
        self.readers: dict[str, MatrixUser] = {}
        # An in-flight kill or start, run in a thread: it must end before maubot is stopped.
        self._busy: asyncio.Future[None] | None = None

    async def start(self, mbp: Path) -> None:
        await asyncio.to_thread(self.synapse.start)
        await self.fake.start()
        self.server = MaubotServer(self.root / "maubot", self.synapse.url, None)
        await asyncio.to_thread(self.server.start)
        prober = await self.new_user("prober")
        self.bot = await deploy(self.server, self.synapse, mbp, prober, self.plugin_config())
        shares = [self.params.rooms // self.params.users] * self.params.users
        for i in range(self.params.rooms % self.params.users):
            shares[i] += 1
        for n, share in enumerate(shares):
            user = await self.new_user(f"chaos{n}")
            reader = MatrixUser(user.url, user.user_id, user.token)
            self.clients.append(reader)
            for room_id in await self.open_rooms(user, share):
                self.owners[room_id], self.readers[room_id] = user, reader

    def plugin_config(self) -> dict[str, Any]:
        agent = {
            "id": AGENT,
            "name": "Chaos",
            "backend": "openai",
            "base_url": self.fake.base_url,
            "api_key": "chaos-key",
            "model": "fake-model",
            "stream": True,
        }
        return {
            "agents": [agent],
            "default_agent": AGENT,
            "rooms.encrypt": "never",
            "dispatch.edit_interval": EDIT_INTERVAL,
            # No limit may hide a loss: no per-minute quota, and a catch-up that answers all.
            "limits.messages_per_minute": 0,
            "catch_up.max_per_room": max(self.params.messages, 20),
        }

    async def new_user(self, name: str) -> MatrixUser:
        account = await asyncio.to_thread(self.synapse.register, name)
        user = MatrixUser(self.synapse.url, account["user_id"], account["access_token"])
        self.clients.append(user)
        user.start()
        await user.synced_once.wait()
        return user

    async def open_rooms(self, user: MatrixUser, count: int) -> list[str]:
        """Onboards the user (one working room), then opens the others with `!ai new`."""
        assert self.bot is not None
        home = await onboard(user, self.bot)
        rooms = [home.rooms[AGENT]]
        for n in range(1, count):
            command = f"!ai new {AGENT} Chaos {n}"
            reply = await user.ask(home.control_room, command, self.bot.bot_id, timeout=30)
            (room_id,) = room_links(reply)
            await user.wait_for(lambda r=room_id: r in user.invites, 30, f"an invite to {room_id}")
            await user.join(room_id)
            rooms.append(room_id)
        for room_id in rooms:
            await user.wait_for_membership(room_id, user.user_id, "join", timeout=30)
        return rooms

    async def in_thread(self, fn: Callable[[], None]) -> None:
        """Runs a blocking kill or start; a cancelled caller does not end it (see settle)."""
        self._busy = asyncio.ensure_future(asyncio.to_thread(fn))
        await asyncio.shield(self._busy)

    async def settle(self) -> None:
        if self._busy is not None:
            await asyncio.gather(self._busy, return_exceptions=True)

    async def read_back(self) -> None:
        await asyncio.gather(*(r.load_history(room) for room, r in self.readers.items()))

    async def stop(self) -> None:
        await self.settle()
        for client in self.clients:
            await client.close()
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
        await self.fake.stop()
        await asyncio.to_thread(self.synapse.stop)


async def send_all(cluster: Cluster, order: list[str], sent: list[Sent], t0: float) -> None:
    """Sends at a steady rate from t0: a send that runs late is followed at once by the next."""
    tag = f"{cluster.params.seed:x}"
    for number, room_id in enumerate(order):
        await asyncio.sleep(max(0.0, t0 + number / cluster.params.rate - time.monotonic()))
        text = f"chaos {tag} message {number:04d}"
        event_id = await cluster.owners[room_id].send_text(room_id, text)
        sent.append(Sent(number, room_id, event_id, text, time.monotonic() - t0))
        if (number + 1) % 50 == 0:
            print(f"  sent {number + 1}/{len(order)} at {time.monotonic() - t0:.1f} s", flush=True)


async def kill_at(
    cluster: Cluster, moments: list[float], sent: list[Sent], t0: float
) -> list[Kill]:
    """SIGKILLs maubot at each moment (seconds after t0) and starts it again at once."""
    assert cluster.server is not None
    server = cluster.server
    kills: list[Kill] = []
    for moment in moments:
        await asyncio.sleep(max(0.0, t0 + moment - time.monotonic()))
        kill = Kill(time.monotonic() - t0, len(sent), cluster.fake.active)
        await cluster.in_thread(server.kill)
        await cluster.in_thread(server.start)
        kill.back_after = time.monotonic() - t0 - kill.at
        kills.append(kill)
        print(
            f"  kill {len(kills)}/{len(moments)} at {kill.at:.1f} s: {kill.sent} sent, "
            f"{kill.streaming} answers streaming; maubot's API back after {kill.back_after:.1f} s",
            flush=True,
        )
    return kills


async def wait_for_answers(cluster: Cluster, sent: list[Sent]) -> tuple[Audit, str]:
    """Reads the rooms back until every message has a final reply, or nothing happens any more,
    or the deadline passes. Returns the last judgement and why the wait ended."""
    assert cluster.bot is not None
    params, started = cluster.params, time.monotonic()
    mark: tuple[int, int] | None = None
    changed = started
    answered = -1
    while True:
        await cluster.read_back()
        audit = judge(cluster.readers, cluster.bot.bot_id, sent)
        now = time.monotonic()
        if (audit.bot_messages, len(cluster.fake.requests)) != mark:
            mark, changed = (audit.bot_messages, len(cluster.fake.requests)), now
        waited = now - started
        if not audit.lost and now - changed >= GRACE:
            return audit, f"every message has a final reply ({waited:.0f} s)"
        if now - changed >= params.quiet:
            return audit, f"nothing changed for {params.quiet:.0f} s ({waited:.0f} s)"
        if waited >= params.deadline:
            return audit, f"the {params.deadline:.0f} s deadline passed"
        if audit.messages - len(audit.lost) != answered:
            answered = audit.messages - len(audit.lost)
            print(f"  {answered}/{audit.messages} answered after {waited:.0f} s", flush=True)
        await asyncio.sleep(POLL)


def build_mbp() -> Path:
    """The plugin as an operator gets it, as the e2e tests take it: `make build`."""
    subprocess.run(["make", "-s", "build"], cwd=ROOT, check=True, capture_output=True)
    (mbp,) = (ROOT / "dist").glob("*.mbp")
    return mbp


def report(
    params: Params, audit: Audit, kills: list[Kill], requests: int, timings: dict[str, float]
) -> None:
    for name in ("lost", "duplicated", "incomplete"):
        findings: list[str] = getattr(audit, name)
        print(f"{name.upper()}: {len(findings)}")
        for line in findings[:10]:
            print(f"  {line}")
        if len(findings) > 10:
            print(f"  … and {len(findings) - 10} more")
    print(
        f"totals: {audit.messages} messages in {params.rooms} rooms, {audit.exact} answered "
        f"exactly once with the full text, {len(audit.lost)} without a final reply "
        f"({audit.lost_mid_stream} of them with an unfinished streamed one), "
        f"{audit.bot_messages} bot messages, {requests} backend requests"
    )
    mid_stream = sum(1 for k in kills if k.streaming)
    print(f"kills: {len(kills)} SIGKILLs, {mid_stream} with answers streaming; seed={params.seed}")
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    print(audit.verdict())


async def soak(cluster: Cluster) -> tuple[list[Sent], list[Kill]]:
    """Sends every message while the kills land; returns once both are done."""
    params = cluster.params
    rng = random.Random(params.seed)
    rooms = list(cluster.owners)
    # Each room gets its share, in a random order: some rooms get bursts that queue up.
    order = [rooms[n % len(rooms)] for n in range(params.messages)]
    rng.shuffle(order)
    span = max(params.messages - 1, 0) / params.rate
    moments = sorted(rng.uniform(0, span) for _ in range(params.kills))
    sent: list[Sent] = []
    t0 = time.monotonic()
    async with asyncio.TaskGroup() as group:
        group.create_task(send_all(cluster, order, sent, t0))
        killing = group.create_task(kill_at(cluster, moments, sent, t0))
    print(
        f"sending: {len(sent)} messages in {sent[-1].at if sent else 0:.1f} s "
        f"(nominal {span:.1f} s); sending and restarts over at {time.monotonic() - t0:.1f} s",
        flush=True,
    )
    return sent, killing.result()


async def run_chaos(params: Params, root: Path) -> Audit:
    print(
        f"== Exactly-once soak: seed={params.seed} (CHAOS_SEED), {params.rooms} rooms of "
        f"{params.users} users, {params.messages} messages at {params.rate:g}/s, "
        f"{params.kills} SIGKILLs; answers of {CHUNKS} chunks every {CHUNK_DELAY} s; in {root}",
        flush=True,
    )
    # A killed maubot drops the answers it was reading: the fake's traceback for each of them
    # would bury the report.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    started = time.monotonic()
    mbp = await asyncio.to_thread(build_mbp)
    cluster = Cluster(root, params)
    try:
        await cluster.start(mbp)
        set_up = time.monotonic()
        print(f"set up in {set_up - started:.0f} s", flush=True)
        sent, kills = await soak(cluster)
        soaked = time.monotonic()
        audit, why = await wait_for_answers(cluster, sent)
        print(f"waited for the answers until {why}", flush=True)
    finally:
        await cluster.stop()
    done = time.monotonic()
    timings = {
        "setup": set_up - started,
        "sending with kills": soaked - set_up,
        "waiting": done - soaked,
        "total": done - started,
    }
    report(params, audit, kills, len(cluster.fake.requests), timings)
    return audit


def main() -> None:
    params = Params.from_env()
    root = Path(tempfile.mkdtemp(prefix="agentspaces-chaos-", dir="/tmp"))
    try:
        asyncio.run(run_chaos(params, root))
    except Exception as e:
        traceback.print_exc()
        print(
            f"chaos: the harness failed ({type(e).__name__}: {e}); files: {root}", file=sys.stderr
        )
        # Lost messages are a measurement; only a failing harness is an error.
        raise SystemExit(1) from e
    if params.keep:
        print(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
