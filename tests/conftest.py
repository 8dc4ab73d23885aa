"""Fixtures: a real Synapse and maubot on loopback, the built plugin, and Matrix users."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.deploy import ROOT, Deployment, deploy
from tests.harness.matrix_user import MatrixUser
from tests.harness.maubot_server import MaubotServer
from tests.harness.synapse import Synapse

POSTGRES_ADMIN_URL = os.environ.get(
    "AGENTSPACES_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
_users = itertools.count()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "e2e" in item.nodeid.split("/"):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def mbp() -> Path:
    """The plugin as an operator gets it: built by `make build`."""
    subprocess.run(["make", "-s", "build"], cwd=ROOT, check=True, capture_output=True)
    (path,) = (ROOT / "dist").glob("*.mbp")
    return path


def _postgres_or_skip() -> None:
    import psycopg2

    try:
        psycopg2.connect(POSTGRES_ADMIN_URL, connect_timeout=3).close()
    except psycopg2.OperationalError as e:
        message = f"PostgreSQL at {POSTGRES_ADMIN_URL} is not reachable: {e}"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: the Postgres tests must run)")
        pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, dropped afterwards."""
    import psycopg2

    _postgres_or_skip()
    name = f"agentspaces_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(POSTGRES_ADMIN_URL)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synapse]:
    server = Synapse(tmp_path_factory.mktemp("synapse"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def db_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def maubot_server(
    request: pytest.FixtureRequest,
    db_kind: str,
    synapse: Synapse,
    mbp: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[MaubotServer]:
    pg = request.getfixturevalue("postgres_url") if db_kind == "postgres" else None
    server = MaubotServer(tmp_path_factory.mktemp(f"maubot-{db_kind}"), synapse.url, pg)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def make_user(synapse: Synapse) -> AsyncIterator[Callable[[str], Awaitable[MatrixUser]]]:
    users: list[MatrixUser] = []

    async def make(name: str = "user") -> MatrixUser:
        account = await asyncio.to_thread(
            synapse.register, f"{name}{next(_users)}_{uuid.uuid4().hex[:6]}"
        )
        user = MatrixUser(synapse.url, account["user_id"], account["access_token"])
        user.start()
        await user.synced_once.wait()
        users.append(user)
        return user

    yield make
    for user in users:
        await user.close()


@pytest.fixture
async def bot(
    maubot_server: MaubotServer, synapse: Synapse, mbp: Path, make_user: Callable
) -> AsyncIterator[Deployment]:
    """A fresh instance of the uploaded plugin on a fresh bot account, live and syncing."""
    prober = await make_user("prober")
    deployment = await deploy(maubot_server, synapse, mbp, prober)
    yield deployment
    await maubot_server.retire(deployment.bot_id, deployment.instance_id)


# ---- Encrypted rooms: a maubot with crypto, crypto-capable users, a bot on that maubot. ----
# One block on purpose: everything the encrypted-room tests add to this file, kept together.
# `maubot_server` above stays the maubot without crypto that every other test runs against.

import contextlib  # noqa: E402

from tests.harness.crypto_user import CryptoMatrixUser  # noqa: E402
from tests.harness.deploy import deployed  # noqa: E402


@pytest.fixture(scope="session")
def crypto_maubot_server(
    request: pytest.FixtureRequest,
    db_kind: str,
    synapse: Synapse,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[MaubotServer]:
    """A second maubot per plugin-database kind, with the encryption packages importable."""
    pg = request.getfixturevalue("postgres_url") if db_kind == "postgres" else None
    root = tmp_path_factory.mktemp(f"maubot-crypto-{db_kind}")
    with MaubotServer(root, synapse.url, pg, crypto=True).running() as server:
        yield server


@pytest.fixture
async def make_crypto_user(
    synapse: Synapse,
) -> AsyncIterator[Callable[[str], Awaitable[CryptoMatrixUser]]]:
    """Like `make_user`, with a device whose keys are uploaded before the user is handed out."""
    async with contextlib.AsyncExitStack() as closing:

        async def make(name: str = "user") -> CryptoMatrixUser:
            localpart = f"{name}{next(_users)}_{uuid.uuid4().hex[:6]}"
            user = await CryptoMatrixUser.register(synapse, localpart)
            closing.push_async_callback(user.close)
            return user

        yield make


@pytest.fixture
async def crypto_bot(
    crypto_maubot_server: MaubotServer, synapse: Synapse, mbp: Path, make_user: Callable
) -> AsyncIterator[Deployment]:
    """`bot` on the maubot with crypto: its client has a device and an OlmMachine."""
    async with deployed(crypto_maubot_server, synapse, mbp, await make_user("prober")) as bot:
        yield bot


# ---- End of the encrypted-rooms block. ----
