"""python -m demo [--once] [--no-crypto]

Starts Synapse and maubot on 127.0.0.1 in a temporary directory, builds and uploads the plugin,
creates a demo user and runs a scripted conversation as that user, printing a transcript. Then it
prints how to log in with any Matrix client and keeps running until Ctrl-C; with --once it exits
after the transcript, with a non-zero code if a step failed. Every process it started is stopped
by its PID on exit.

With maubot's encryption packages installed (python-olm, as `maubot[encryption]` and the Docker
image have them), maubot runs with end-to-end encryption: the working rooms are encrypted, and the
demo user has a device that encrypts and decrypts. Without them, or with --no-crypto, maubot runs
as a plain `pip install maubot` does. The transcript says which one ran.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ruamel.yaml import YAML

from tests.config import ROOT
from tests.harness.deploy import Deployment, deploy
from tests.harness.flows import Onboarded, onboard
from tests.harness.matrix_user import MatrixUser, Reply
from tests.harness.maubot_server import MaubotServer
from tests.harness.synapse import Synapse

DEMO_USER = "demo"
DEMO_PASSWORD = "agentspaces-demo"
REPLY_TIMEOUT = 60.0


class StepFailed(Exception):
    """A demo step did not show what it should; the message says what was seen instead."""


class Transcript:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.started = time.monotonic()

    def title(self, text: str) -> None:
        print(f"\n== {text} ==", flush=True)

    def note(self, text: str) -> None:
        print(f"   {text}", flush=True)

    def said(self, who: str, text: str) -> None:
        lines = text.strip().splitlines() or [""]
        print(f"   {who:>5} > {lines[0]}", flush=True)
        for line in lines[1:]:
            for part in textwrap.wrap(line, 90) or [""]:
                print(f"   {'':>5}   {part}", flush=True)

    async def step(self, title: str, action: Callable[[], Awaitable[Any]]) -> Any:
        self.title(title)
        try:
            return await action()
        except Exception as e:
            if isinstance(e, (StepFailed, TimeoutError)):
                detail = f"{type(e).__name__}: {e}"
            else:
                detail = traceback.format_exc(limit=4)
            print(f"   FAILED: {detail.strip()}", flush=True)
            self.failures.append(title)
            return None


def crypto_installed() -> bool:
    """maubot's encryption packages are importable here, so maubot's client can get a device."""
    try:
        import olm  # noqa: F401
    except ImportError:
        return False
    return all(importlib.util.find_spec(name) for name in ("Crypto", "unpaddedbase64"))


class Demo:
    def __init__(self, root: Path, crypto: bool) -> None:
        self.root = root
        self.crypto = crypto
        self.out = Transcript()
        self.synapse: Synapse | None = None
        self.maubot: MaubotServer | None = None
        self.users: list[MatrixUser] = []
        self.bot: Deployment | None = None
        self.user: MatrixUser | None = None

    # Setting up

    async def setup(self) -> None:
        mbp = await asyncio.to_thread(build)
        self.out.note(f"built {mbp.relative_to(ROOT)}")
        self.synapse = Synapse(self.root / "synapse")
        await asyncio.to_thread(self.synapse.start)
        self.out.note(f"Synapse (server name 'localhost') at {self.synapse.url}")
        self.maubot = MaubotServer(self.root / "maubot", self.synapse.url, None, self.crypto)
        await asyncio.to_thread(self.maubot.start)
        self.out.note(f"maubot 0.6 at {self.maubot.url}, {self.mode}")
        prober = await self.new_user(f"prober_{int(time.time())}", "prober-password")
        self.user = await self.new_user(DEMO_USER, DEMO_PASSWORD, "Demo User", self.crypto)
        self.bot = await deploy(
            self.maubot,
            self.synapse,
            mbp,
            prober,
            config={"access.admins": ["@demo:{server}"], "dispatch.edit_interval": 0.2},
        )
        self.out.note(
            f"uploaded the plugin and started instance '{self.bot.instance_id}' "
            f"for the bot {self.bot.bot_id}"
        )
        self.out.note(f"demo user {self.user.user_id} (password {DEMO_PASSWORD})")

    @property
    def mode(self) -> str:
        if self.crypto:
            return "WITH end-to-end encryption: the working rooms are encrypted"
        return "WITHOUT end-to-end encryption: the working rooms are not encrypted"

    async def new_user(
        self, localpart: str, password: str, name: str = "", device: bool = False
    ) -> MatrixUser:
        """A Matrix user; with `device`, one whose device encrypts, as Element's does."""
        assert self.synapse is not None
        user: MatrixUser
        if device:
            # Imported only here: it needs the encryption packages.
            from tests.harness.crypto_user import CryptoMatrixUser

            # The demo's devices are not cross-signed: mautrix would warn about it at every
            # message. (mautrix's logger class is set by the import above.)
            logging.getLogger("mau.crypto").setLevel(logging.ERROR)

            user = await CryptoMatrixUser.register(self.synapse, localpart, password)
        else:
            account = await asyncio.to_thread(self.synapse.register, localpart, password)
            user = MatrixUser(self.synapse.url, account["user_id"], account["access_token"])
            user.start()
            await user.synced_once.wait()
        self.users.append(user)
        if name:
            await user.request(
                "PUT", f"/profile/{quote(user.user_id)}/displayname", {"displayname": name}
            )
        return user

    # The conversation

    async def run(self) -> None:
        await self.out.step("Setting up Synapse, maubot and the plugin on 127.0.0.1", self.setup)
        if self.out.failures:
            return
        onboarded = await self.out.step("1. Onboarding: `!ai start`", self.onboarding)
        if onboarded is None:
            return
        room = onboarded.rooms.get("echo") or next(iter(onboarded.rooms.values()))
        await self.out.step(
            "2. A streamed reply from the echo agent",
            lambda: self.chat(room, "Hello, echo! What do you hear?", streamed=True),
        )
        await self.out.step("3. Shared memory and context", lambda: self.memory_and_context(room))
        await self.out.step("4. Restarting maubot", self.restart)
        await self.out.step(
            "5. After the restart, the room still works",
            lambda: self.after_restart(room),
        )

    async def ask(self, room_id: str, text: str) -> Reply:
        assert self.user is not None and self.bot is not None
        self.out.said("you", text)
        reply = await self.user.ask(room_id, text, self.bot.bot_id, REPLY_TIMEOUT)
        self.out.said("bot", reply.body)
        return reply

    async def onboarding(self) -> Onboarded:
        assert self.user is not None and self.bot is not None
        self.out.said("you", "!ai start   (in a new room with the bot)")
        onboarded = await onboard(self.user, self.bot, timeout=REPLY_TIMEOUT)
        start_reply = self.reply_to_command(onboarded.control_room, "!ai start")
        if start_reply:
            self.out.said("bot", start_reply)
        space_name = await self.room_name(onboarded.space_id)
        self.out.note(f'Space "{space_name}" ({onboarded.space_id}), joined')
        if not onboarded.rooms:
            raise StepFailed("the Space has no working rooms")
        for agent_id, room_id in onboarded.rooms.items():
            encrypted = await self.user.is_encrypted(room_id)
            name = await self.room_name(room_id)
            how = "encrypted" if encrypted else "not encrypted"
            self.out.note(f'  room "{name}" -> agent {agent_id}, {how}')
            if encrypted != self.crypto:
                raise StepFailed(f"the room should be {'' if self.crypto else 'un'}encrypted")
        return onboarded

    def reply_to_command(self, room_id: str, command: str) -> str:
        assert self.user is not None and self.bot is not None
        for ev in self.user.events(room_id, "m.room.message", self.user.user_id):
            if ev["content"].get("body") == command:
                replies = self.user.replies_to(room_id, ev["event_id"], self.bot.bot_id)
                return replies[-1].body if replies else ""
        return ""

    async def room_name(self, room_id: str) -> str:
        assert self.user is not None
        try:
            return (await self.user.get_state(room_id, "m.room.name")).get("name", "")
        except Exception:
            return "(no name)"

    async def chat(self, room_id: str, text: str, streamed: bool = False) -> Reply:
        reply = await self.ask(room_id, text)
        if text not in reply.body:
            raise StepFailed(f"the echo agent did not echo the message: {reply.body!r}")
        if streamed:
            if not reply.edits:
                raise StepFailed("the reply came in one piece: it was not streamed")
            self.out.note(f"streamed: the reply was edited {reply.edits} time(s) as it grew")
        if self.crypto:
            stored = await self.user.get_event(room_id, reply.event_id) if self.user else {}
            if stored.get("type") != "m.room.encrypted":
                raise StepFailed("the reply was not end-to-end encrypted")
            self.out.note("the reply was end-to-end encrypted; the demo user's device decrypted it")
        return reply

    async def memory_and_context(self, room_id: str) -> None:
        remembered = await self.ask(room_id, "!ai remember I like short answers")
        if "short answers" not in remembered.body and "remember" not in remembered.body.lower():
            raise StepFailed(f"`!ai remember` did not confirm: {remembered.body!r}")
        await self.ask(room_id, "!ai memory")
        context = await self.ask(room_id, "!ai context")
        if not context.body.strip():
            raise StepFailed("`!ai context` gave an empty reply")

    async def restart(self) -> None:
        assert self.bot is not None and self.maubot is not None
        old_pid = self.maubot.proc.pid if self.maubot.proc else None
        self.out.note(f"stopping maubot (PID {old_pid}) and starting it again")
        await self.bot.restart()
        new_pid = self.maubot.proc.pid if self.maubot.proc else None
        self.out.note(f"maubot is back (PID {new_pid}); the bot is syncing again")

    async def after_restart(self, room_id: str) -> None:
        await self.chat(room_id, "Are you still there after the restart?")
        await self.ask(room_id, "!ai admin status")

    # Afterwards

    async def web_token(self) -> str:
        assert self.bot is not None
        config = YAML(typ="safe").load((await self.bot.instance())["config"])
        return str(config["web"]["token"])

    async def print_login(self) -> None:
        assert self.synapse is not None and self.maubot is not None and self.bot is not None
        token = await self.web_token()
        plugin_url = f"{self.maubot.url}/_matrix/maubot/plugin/{self.bot.instance_id}"
        print(
            textwrap.dedent(
                f"""
                == Log in with any Matrix client ==
                   homeserver:  {self.synapse.url}
                   user:        {self.user.user_id if self.user else DEMO_USER}
                   password:    {DEMO_PASSWORD}
                   maubot UI:   {self.maubot.url}/_matrix/maubot  (admin / {self.maubot.password})
                   status page: {plugin_url}/status?token={token}
                   metrics:     {plugin_url}/metrics?token={token}
                   logs:        {self.root}
                """
            ),
            flush=True,
        )

    async def close(self) -> None:
        for user in self.users:
            await user.close()

    def stop_servers(self) -> None:
        # By PID, the newest first: maubot still syncs against Synapse until it stops.
        for server in (self.maubot, self.synapse):
            if server is not None:
                server.stop()


def build() -> Path:
    result = subprocess.run(
        ["make", "-s", "build"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    found = sorted((ROOT / "dist").glob("*.mbp"))
    if result.returncode != 0 or not found:
        raise StepFailed(f"make build failed:\n{result.stdout}\n{result.stderr}")
    return found[-1]


async def wait_for_interrupt() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("Running. Press Ctrl-C to stop everything.", flush=True)
    await stop.wait()
    print("\nStopping ...", flush=True)


async def amain(once: bool, demo: Demo) -> int:
    try:
        await demo.run()
        out = demo.out
        seconds = time.monotonic() - out.started
        print(f"\nmaubot ran {demo.mode}.", flush=True)
        if out.failures:
            print(f"\nDemo FAILED in {seconds:.0f} s: {', '.join(out.failures)}", flush=True)
            print(f"The maubot log is {demo.root / 'maubot' / 'maubot.log'}", flush=True)
        else:
            print(f"\nDemo complete in {seconds:.0f} s: every step worked.", flush=True)
        if demo.bot is not None:
            await demo.print_login()
        if not once and demo.bot is not None:
            await wait_for_interrupt()
        return 1 if out.failures else 0
    finally:
        await demo.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n")[2])
    parser.add_argument("--once", action="store_true", help="exit after the transcript")
    parser.add_argument(
        "--no-crypto",
        action="store_true",
        help="run maubot without encryption even if its encryption packages are installed",
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="agentspaces-demo-"))
    crypto = crypto_installed() and not args.no_crypto
    if not crypto_installed():
        print("maubot's encryption packages (python-olm) are not installed here.", flush=True)
    demo = Demo(root, crypto)
    code = 1
    try:
        code = asyncio.run(amain(args.once, demo))
    except KeyboardInterrupt:
        print("\nInterrupted; stopping ...", flush=True)
        code = 130
    finally:
        demo.stop_servers()
        if code == 0:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"Logs kept in {root}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
