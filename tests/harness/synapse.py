"""A real Synapse homeserver from PyPI, on 127.0.0.1, in a temp dir, on SQLite."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

from .procs import free_port, stop_pid, tail, wait_until

SERVER_NAME = "localhost"
_UNLIMITED = {"per_second": 10000, "burst_count": 10000}
# The same list serves Synapse 1.130 (tests/e2e/test_room_versions.py): it silently ignores the
# keys it does not know yet (rc_room_creation, rc_profile, rc_reports), and limits room creation
# with rc_message there, which is raised too.
_RATE_LIMITS = [
    "rc_message",
    "rc_registration",
    "rc_room_creation",
    "rc_media_create",
    "rc_profile",
    "rc_3pid_validation",
    "rc_admin_redaction",
    "rc_joins_per_room",
    "rc_presence",
    "rc_delayed_event_mgmt",
    "rc_reports",
]


class Synapse:
    def __init__(
        self, root: Path, rc_message: dict | None = None, python: str | Path = sys.executable
    ) -> None:
        self.root = root
        # The interpreter of the venv Synapse is installed in: an older release lives in a venv
        # of its own, since the test venv pins the current one.
        self.python = str(python)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.secret = "test-registration-secret"
        self.proc: subprocess.Popen | None = None
        self.rc_message = rc_message

    @property
    def log_path(self) -> Path:
        return self.root / "homeserver.log"

    def _config(self) -> dict:
        limits = {name: dict(_UNLIMITED) for name in _RATE_LIMITS}
        if self.rc_message:
            limits["rc_message"] = self.rc_message
        return {
            "server_name": SERVER_NAME,
            "public_baseurl": f"{self.url}/",
            "pid_file": str(self.root / "homeserver.pid"),
            "listeners": [
                {
                    "port": self.port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": {
                "name": "sqlite3",
                "args": {"database": str(self.root / "homeserver.db")},
            },
            "log_config": str(self.root / "log.yaml"),
            "media_store_path": str(self.root / "media"),
            "signing_key_path": str(self.root / "signing.key"),
            "registration_shared_secret": self.secret,
            "enable_registration": False,
            "report_stats": False,
            "trusted_key_servers": [],
            "federation_domain_whitelist": [],
            "presence": {"enabled": False},
            "url_preview_enabled": False,
            "suppress_key_server_warning": True,
            "macaroon_secret_key": "test-macaroon-secret",
            "form_secret": "test-form-secret",
            **limits,
            "rc_login": {
                "address": dict(_UNLIMITED),
                "account": dict(_UNLIMITED),
                "failed_attempts": dict(_UNLIMITED),
            },
            "rc_joins": {"local": dict(_UNLIMITED), "remote": dict(_UNLIMITED)},
            "rc_invites": {
                "per_room": dict(_UNLIMITED),
                "per_user": dict(_UNLIMITED),
                "per_issuer": dict(_UNLIMITED),
            },
        }

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        config_path = self.root / "homeserver.yaml"
        # JSON is YAML, and needs no YAML library here.
        config_path.write_text(json.dumps(self._config(), indent=2))
        (self.root / "log.yaml").write_text(
            json.dumps(
                {
                    "version": 1,
                    "formatters": {
                        "precise": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
                    },
                    "handlers": {
                        "file": {
                            "class": "logging.FileHandler",
                            "formatter": "precise",
                            "filename": str(self.log_path),
                        }
                    },
                    "root": {"level": "INFO", "handlers": ["file"]},
                    "disable_existing_loggers": False,
                }
            )
        )
        cmd = [self.python, "-m", "synapse.app.homeserver", "-c", str(config_path)]
        keys = subprocess.run([*cmd, "--generate-keys"], capture_output=True, cwd=self.root)
        if keys.returncode:
            # An interpreter whose Synapse cannot even import fails here: say why.
            raise RuntimeError(f"{self.python}: Synapse failed:\n{keys.stderr.decode()[-3000:]}")
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.root,
            stdout=open(self.root / "stdout.log", "wb"),
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(self._ready, 60, "Synapse", self.proc)
        except Exception as e:
            raise RuntimeError(
                f"{e}\n{tail(self.log_path)}\n{tail(self.root / 'stdout.log')}"
            ) from e

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/_matrix/client/versions", timeout=2) as resp:
            return resp.status == 200

    def stop(self) -> None:
        stop_pid(self.proc)

    def _post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(
            f"{self.url}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def register(self, localpart: str, password: str = "password", admin: bool = False) -> dict:
        """Registers with the shared secret. Returns user_id, access_token and device_id."""
        path = "/_synapse/admin/v1/register"
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as resp:
            nonce = json.loads(resp.read())["nonce"]
        parts = (nonce, localpart, password, "admin" if admin else "notadmin")
        mac = hmac.new(self.secret.encode(), b"\x00".join(p.encode() for p in parts), hashlib.sha1)
        body = {
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": admin,
            "mac": mac.hexdigest(),
        }
        return self._post(path, body)

    def login(self, localpart: str, password: str = "password") -> dict:
        return self._post(
            "/_matrix/client/v3/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": localpart},
                "password": password,
            },
        )
