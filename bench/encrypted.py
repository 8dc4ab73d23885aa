"""The plugin's overhead per message in an encrypted working room, next to a plain one.

On a real Synapse and a maubot with crypto (tests/harness), one bot and one user with a device
(`CryptoMatrixUser`) share two working rooms of the same openai agent, served by a zero-latency
fake in this process: one room encrypted (`rooms.encrypt: auto` on a client with crypto), one
not (made after switching to `never`). Messages alternate between the rooms, one at a time: each
waits for its final answer, so nothing queues.

The overhead of a message is the time from the moment maubot's client has the /sync response
holding it (a probe on maubot's PYTHONPATH, `bench/probe`, as ../shared/bench does it) to the
moment the agent's request arrives: in an encrypted room that includes maubot's decryption and
the plugin's own look at the encrypted event. The round trip is what the user sees: sent, to
the final (decrypted) reply in its /sync. Prints p50 and p99 of both, per kind of room.

`make bench ARGS=encrypted`, about a minute. ENCRYPTED_BENCH_MESSAGES sets the messages per
kind (default 200); the first of each kind (the session's key exchange) is not counted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.config import ROOT
from tests.fakes.servers import FakeOpenAI
from tests.harness.crypto_user import CryptoMatrixUser
from tests.harness.deploy import Deployment, deploy
from tests.harness.flows import onboard, room_links
from tests.harness.matrix_user import Users
from tests.harness.maubot_server import MaubotServer
from tests.harness.synapse import Synapse

MESSAGES = int(os.environ.get("ENCRYPTED_BENCH_MESSAGES", "200"))
PROBE_DIR = Path(__file__).resolve().parent / "probe"
AGENT = "bench"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def build_mbp() -> Path:
    subprocess.run(["make", "-s", "build"], cwd=ROOT, check=True, capture_output=True)
    (path,) = (ROOT / "dist").glob("*.mbp")
    return path


class Bench:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.probe_file = root / "probe.tsv"
        self.synapse = Synapse(root / "synapse")
        self.agent = FakeOpenAI()
        self.maubot: MaubotServer | None = None
        self.bot: Deployment | None = None
        self.user: CryptoMatrixUser | None = None
        self.users = Users(self.synapse)

    async def start(self) -> dict[str, str]:
        """Everything up; returns the working room of each kind."""
        await asyncio.to_thread(self.synapse.start)
        await self.agent.start()
        # Only maubot gets the probe: it reads these when it starts.
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(PROBE_DIR), os.environ.get("PYTHONPATH")) if p
        )
        os.environ["AGENTSPACES_PROBE_FILE"] = str(self.probe_file)
        self.maubot = MaubotServer(self.root / "maubot", self.synapse.url, None, crypto=True)
        await asyncio.to_thread(self.maubot.start)
        prober = await self.users.make("prober")
        self.bot = await deploy(self.maubot, self.synapse, build_mbp(), prober, self.config())
        self.user = await CryptoMatrixUser.register(self.synapse, "bencher")
        home = await onboard(self.user, self.bot)
        await self.bot.update_config(self.config("never"))
        command = f"!ai new {AGENT} Plain"
        reply = await self.user.ask(home.control_room, command, self.bot.bot_id, timeout=30)
        (plain,) = room_links(reply)
        await self.user.wait_for(lambda: plain in self.user.invites, 30, "the invite")
        await self.user.join(plain)
        await self.user.wait_for_membership(plain, self.user.user_id, "join")
        rooms = {"encrypted": home.rooms[AGENT], "plain": plain}
        for kind, room_id in rooms.items():
            if await self.user.is_encrypted(room_id) != (kind == "encrypted"):
                raise RuntimeError(f"the {kind} room is not {kind}")
        return rooms

    def config(self, encrypt: str = "auto") -> dict[str, Any]:
        agent = {
            "id": AGENT,
            "backend": "openai",
            "base_url": self.agent.base_url,
            "api_key": "bench-key",
            "model": "fake",
            "stream": False,
        }
        return {
            "agents": [agent],
            "default_agent": AGENT,
            "rooms.encrypt": encrypt,
            "limits.messages_per_minute": 0,
        }

    async def measure(self, rooms: dict[str, str]) -> dict[str, dict[str, list[float]]]:
        """Sends MESSAGES per kind, alternating; returns kind -> overhead and round trip (s)."""
        assert self.user is not None and self.bot is not None
        sent: dict[str, tuple[str, str]] = {}  # text -> (kind, event id)
        round_trips: dict[str, list[float]] = {kind: [] for kind in rooms}
        for n in range(MESSAGES + 1):
            for kind, room_id in rooms.items():
                text = f"{kind} message {n}"
                started = time.monotonic()
                event_id = await self.user.send_text(room_id, text)
                await self.user.wait_for_reply(room_id, event_id, self.bot.bot_id, timeout=30)
                if n:
                    round_trips[kind].append(time.monotonic() - started)
                    sent[text] = (kind, event_id)
        arrived = self.probed()
        overheads: dict[str, list[float]] = {kind: [] for kind in rooms}
        for request in self.agent.requests:
            text = request.body["messages"][-1]["content"]
            if text in sent:
                kind, event_id = sent[text]
                overheads[kind].append(request.at - arrived[event_id])
        return {
            kind: {"overhead": overheads[kind], "round trip": round_trips[kind]} for kind in rooms
        }

    def probed(self) -> dict[str, float]:
        """Event id -> when the bot's /sync holding it arrived in maubot (the earliest)."""
        assert self.bot is not None
        arrived: dict[str, float] = {}
        for line in self.probe_file.read_text().splitlines():
            mxid, event_id, at = line.split("\t")
            if mxid == self.bot.bot_id:
                arrived.setdefault(event_id, float(at))
        return arrived

    async def stop(self) -> None:
        await self.users.close()
        if self.user is not None:
            await self.user.close()
        await self.agent.stop()
        for server in (self.maubot, self.synapse):
            if server is not None:
                await asyncio.to_thread(server.stop)


def report(results: dict[str, dict[str, list[float]]]) -> None:
    print(f"{MESSAGES} messages per kind of room, one at a time, zero-latency agent (ms)")
    print(f"{'':28} {'n':>5} {'p50':>8} {'p99':>8} {'mean':>8}")
    for metric in ("overhead", "round trip"):
        for kind, figures in results.items():
            values = [v * 1000 for v in figures[metric]]
            label = f"{metric}, {kind}"
            print(
                f"{label:28} {len(values):5} {percentile(values, 0.5):8.1f} "
                f"{percentile(values, 0.99):8.1f} {statistics.fmean(values):8.1f}"
            )
    for metric in ("overhead", "round trip"):
        plain = percentile([v * 1000 for v in results["plain"][metric]], 0.5)
        encrypted = percentile([v * 1000 for v in results["encrypted"][metric]], 0.5)
        print(f"{metric}: encrypted - plain at p50 = {encrypted - plain:+.1f} ms")
    print(
        "overhead: the bot's /sync arrived in maubot -> the agent's request arrived "
        "(decryption and the plugin's own work); round trip: the user sends -> the final reply "
        "is in the user's /sync"
    )


async def run_encrypted_bench() -> None:
    # The bench's devices are not cross-signed; mautrix would warn about it at every message.
    logging.getLogger("mau.crypto").setLevel(logging.ERROR)
    root = Path(tempfile.mkdtemp(prefix="agentspaces-bench-encrypted-"))
    bench = Bench(root)
    saved = {key: os.environ.get(key) for key in ("PYTHONPATH", "AGENTSPACES_PROBE_FILE")}
    done = False
    try:
        rooms = await bench.start()
        report(await bench.measure(rooms))
        done = True
    finally:
        await bench.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if done:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"logs kept in {root}")
