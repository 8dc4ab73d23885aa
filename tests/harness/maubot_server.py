"""A real maubot 0.6 server, started as `python -m maubot -n -c …`, and its management API.

The API calls are the ones the admin UI makes: log in, upload the .mbp, create the client,
create the instance, update its config.

Two kinds, chosen by `crypto`: with it, maubot has its encryption packages (the dev venv installs
them) and every client with a device gets an OlmMachine. Without it (the default, what a plain
`pip install maubot` gives), a shim directory first on PYTHONPATH hides python-olm, so maubot and
mautrix take their own "encryption dependencies not installed" path.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

from .procs import free_port, port_is_free, stop_pid, tail, wait_until

API = "/_matrix/maubot/v1"
# First on the no-crypto maubot's PYTHONPATH: its `olm` package raises ImportError.
NOCRYPTO_SHIM = Path(__file__).resolve().parent / "nocrypto"
# What maubot 0.6 logs for a client with a device (maubot/client.py), per mode.
CRYPTO_ENABLED = "Enabling end-to-end encryption support"
CRYPTO_MISSING = "Client has device ID, but encryption dependencies not installed"


class MaubotServer:
    def __init__(
        self, root: Path, homeserver_url: str, postgres_url: str | None, crypto: bool = False
    ) -> None:
        self.root = root
        self.crypto = crypto
        self.homeserver_url = homeserver_url
        self.postgres_url = postgres_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.secret = "test-unshared-secret"
        self.password = "admin-password"
        self.proc: subprocess.Popen | None = None
        self._token: str | None = None

    @property
    def log_path(self) -> Path:
        return self.root / "maubot.log"

    @property
    def plugin_db_dir(self) -> Path:
        return self.root / "plugins"

    def _config(self) -> dict[str, Any]:
        return {
            "database": f"sqlite:{self.root / 'maubot.db'}",
            "crypto_database": "default",
            "plugin_directories": {
                "upload": str(self.root / "plugins"),
                "load": [str(self.root / "plugins")],
                "trash": str(self.root / "trash"),
            },
            "plugin_databases": {
                "sqlite": str(self.plugin_db_dir),
                "postgres": self.postgres_url,
                "postgres_max_conns_per_plugin": 3,
                "postgres_opts": {},
            },
            "server": {
                "hostname": "127.0.0.1",
                "port": self.port,
                "public_url": self.url,
                "ui_base_path": "/_matrix/maubot",
                "plugin_base_path": "/_matrix/maubot/plugin/",
                "override_resource_path": False,
                "unshared_secret": self.secret,
            },
            "homeservers": {"localhost": {"url": self.homeserver_url, "secret": None}},
            "admins": {"root": "", "admin": self.password},
            "api_features": {
                key: True
                for key in (
                    "login",
                    "plugin",
                    "plugin_upload",
                    "instance",
                    "instance_database",
                    "client",
                    "client_proxy",
                    "client_auth",
                    "dev_open",
                    "log",
                )
            },
            "logging": {
                "version": 1,
                "formatters": {
                    "normal": {"format": "[%(asctime)s] [%(levelname)s@%(name)s] %(message)s"}
                },
                "handlers": {
                    "file": {
                        "class": "logging.FileHandler",
                        "formatter": "normal",
                        "filename": str(self.log_path),
                    }
                },
                "loggers": {
                    "maubot": {"level": "DEBUG"},
                    "mau": {"level": "DEBUG"},
                    "aiohttp": {"level": "INFO"},
                },
                "root": {"level": "DEBUG", "handlers": ["file"]},
            },
        }

    def start(self) -> None:
        for sub in ("plugins", "trash"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        if not port_is_free(self.port):
            # A second maubot on a taken port keeps syncing and answers every command twice.
            raise RuntimeError(f"port {self.port} is taken; not starting a second maubot")
        config_path = self.root / "config.yaml"
        config_path.write_text(json.dumps(self._config(), indent=2))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "maubot", "-n", "-c", str(config_path)],
            cwd=self.root,
            env=self._env(),
            stdout=open(self.root / "stdout.log", "ab"),
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(self._ready, 60, "maubot", self.proc)
        except Exception as e:
            raise RuntimeError(
                f"{e}\n{tail(self.log_path)}\n{tail(self.root / 'stdout.log')}"
            ) from e

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if not self.crypto:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(NOCRYPTO_SHIM), env.get("PYTHONPATH")) if p
            )
        return env

    def check_crypto_mode(self, user_id: str) -> None:
        """Raises unless maubot's log shows that the client `user_id` got this server's mode.

        The log is the only outside view of whether maubot gave the client an OlmMachine.
        """
        expected, other = (CRYPTO_ENABLED, CRYPTO_MISSING)
        if not self.crypto:
            expected, other = other, expected
        lines = [line for line in self.log_text().splitlines() if f"client.{user_id}]" in line]
        if not any(expected in line for line in lines) or any(other in line for line in lines):
            mode = "with" if self.crypto else "without"
            raise RuntimeError(
                f"maubot {mode} crypto: its log does not say {expected!r} for {user_id}:\n"
                + "\n".join(lines[-20:])
            )

    def _ready(self) -> bool:
        req = urllib.request.Request(f"{self.url}{API}/auth/ping", method="POST")
        try:
            urllib.request.urlopen(req, timeout=2)
        except urllib.error.HTTPError as e:
            return e.code == 401
        return True

    def stop(self) -> None:
        stop_pid(self.proc)
        self.proc = None

    def kill(self, timeout: float = 15) -> None:
        """SIGKILLs maubot by its PID and waits for the exit: a crash, so nothing of the plugin's
        stop() runs. start() brings it back with the same config and data."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout)
        self.proc = None

    @contextmanager
    def running(self) -> Iterator[MaubotServer]:
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def restart(self) -> None:
        """Stops maubot by PID and starts it again with the same config and data.

        maubot drops every event of its client's first /sync after a start, and never joins
        invites that came while it was down: the plugin's catch-up is what answers those.
        """
        self.stop()
        self.start()

    # Management API

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        if self._token is None and path != "/auth/login":
            login = await self._request("POST", "/auth/login", json={"secret": self.secret})
            self._token = login["token"]
        headers = kwargs.pop("headers", {})
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, f"{self.url}{API}{path}", headers=headers, **kwargs) as resp,
        ):
            text = await resp.text()
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path} -> {resp.status}: {text}")
            return json.loads(text) if text else None

    async def upload_plugin(self, mbp: Path) -> dict:
        return await self._request(
            "POST",
            "/plugins/upload?allow_override=true",
            data=await asyncio.to_thread(mbp.read_bytes),
            headers={"Content-Type": "application/zip"},
        )

    async def put_client(self, user_id: str, access_token: str, device_id: str) -> dict:
        return await self._request(
            "PUT",
            f"/client/{user_id}",
            json={
                "homeserver": self.homeserver_url,
                "access_token": access_token,
                "device_id": device_id,
                "autojoin": True,
                "sync": True,
                "enabled": True,
            },
        )

    async def retire(self, user_id: str, instance_id: str) -> None:
        """Disables an instance and its client, so that neither runs again, even at a restart.

        Not a DELETE: maubot 0.6 stops a deleted instance's Postgres database twice, and the
        second stop waits 3 s for connections that are already drained.
        """
        await self.put_instance(instance_id, enabled=False)
        await self._request("PUT", f"/client/{user_id}", json={"enabled": False, "started": False})

    async def put_instance(self, instance_id: str, **fields: Any) -> dict:
        return await self._request("PUT", f"/instance/{instance_id}", json=fields)

    async def get_instance(self, instance_id: str) -> dict:
        return await self._request("GET", f"/instance/{instance_id}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
