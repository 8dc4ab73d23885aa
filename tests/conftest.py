"""The fixtures of every test, in one place.

- Unit tests: `store` (a real plugin database, on SQLite and on PostgreSQL), `fake` (the one fake
  Matrix client) and `world` (the plugin's real parts around them).
- Agent backends: `openai_server` and `agent_server`, local fake servers on loopback.
- End-to-end tests: a real Synapse and maubot on loopback, the built plugin, Matrix users.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from maubot.lib.plugin_db import ProxyPostgresDatabase
from mautrix.util.async_db import Database

from plugin.db import Store
from plugin.db.migrations import upgrade_table
from tests.config import ROOT
from tests.fakes.matrix import FakeMatrix
from tests.fakes.servers import FakeAgentPlatform, FakeOpenAI
from tests.fakes.world import World, make_world
from tests.harness.crypto_user import CryptoMatrixUser
from tests.harness.deploy import Deployment, deployed
from tests.harness.matrix_user import MatrixUser, Users
from tests.harness.maubot_server import MaubotServer
from tests.harness.synapse import Synapse

POSTGRES_ADMIN_URL = os.environ.get(
    "AGENTSPACES_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
_schemas = itertools.count()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "e2e" in item.nodeid.split("/"):
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A failed end-to-end test shows the tail of maubot's log: the plugin's side of it."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for name in ("maubot_server", "old_maubot_server"):
        server = getattr(item, "funcargs", {}).get(name)
        if isinstance(server, MaubotServer):
            lines = server.log_text().splitlines()[-120:]
            report.sections.append((f"{name} log (last 120 lines)", "\n".join(lines)))


# PostgreSQL


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
async def postgres_pool(postgres_url: str) -> AsyncIterator[Database]:
    """One connection pool for the unit tests' PostgreSQL stores, as maubot keeps one."""
    pool = Database.create(postgres_url, log=logging.getLogger("db.pool"))
    await pool.start()
    yield pool
    await pool.stop()


# Unit tests: the store, the fake client, the plugin's parts


@pytest.fixture(params=["sqlite", "postgres"])
def store_pool(request: pytest.FixtureRequest) -> Database | None:
    """The PostgreSQL pool for the `[postgres]` variant of a store, None for SQLite. Not async:
    pytest-asyncio sets up the async pool only from a synchronous fixture's request."""
    return request.getfixturevalue("postgres_pool") if request.param == "postgres" else None


@pytest.fixture
async def store(store_pool: Database | None, tmp_path: Path) -> AsyncIterator[Store]:
    """A migrated plugin database, as maubot gives an instance: a SQLite file, or a schema of its
    own in PostgreSQL (maubot's own proxy database, dropped afterwards)."""
    log = logging.getLogger("db")
    db: Database
    if store_pool is None:
        db = Database.create(
            f"sqlite:{tmp_path / 'plugin.db'}", upgrade_table=upgrade_table, log=log
        )
    else:
        schema = f"unit{next(_schemas)}_{uuid.uuid4().hex[:6]}"
        db = ProxyPostgresDatabase(store_pool, schema, 3, upgrade_table, log)
    await db.start()
    yield Store(db)
    if isinstance(db, ProxyPostgresDatabase):
        await db.delete()
    await db.stop()


@pytest.fixture
def fake() -> FakeMatrix:
    return FakeMatrix()


@pytest.fixture
async def world(store: Store, fake: FakeMatrix) -> AsyncIterator[World]:
    """The plugin's parts on the store and the fake client, with base-config.yaml's settings."""
    built = make_world(store, fake=fake)
    yield built
    await built.close()


# Agent backends


@pytest.fixture
async def openai_server() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def agent_server() -> AsyncIterator[FakeAgentPlatform]:
    server = FakeAgentPlatform()
    await server.start()
    yield server
    await server.stop()


# End-to-end: Synapse, maubot, the built plugin, Matrix users


@pytest.fixture(scope="session")
def mbp() -> Path:
    """The plugin as an operator gets it: built by `make build`."""
    subprocess.run(["make", "-s", "build"], cwd=ROOT, check=True, capture_output=True)
    (path,) = (ROOT / "dist").glob("*.mbp")
    return path


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
    users = Users(synapse)
    yield users.make
    await users.close()


@pytest.fixture
async def bot(
    maubot_server: MaubotServer, synapse: Synapse, mbp: Path, make_user: Callable
) -> AsyncIterator[Deployment]:
    """A fresh instance of the uploaded plugin on a fresh bot account, live and syncing."""
    async with deployed(maubot_server, synapse, mbp, make_user) as deployment:
        yield deployment


@pytest.fixture(scope="module")
async def module_bot(
    maubot_server: MaubotServer, synapse: Synapse, mbp: Path
) -> AsyncIterator[Deployment]:
    """One deployment for a whole test module (per plugin database), for modules whose tests
    each configure it and onboard users of their own: a deployment costs seconds."""
    users = Users(synapse)
    async with deployed(maubot_server, synapse, mbp, users.make) as deployment:
        yield deployment
    await users.close()


# Older homeserver: Synapse 1.130, default room version 10, no room version 12
# Built by `make venv-synapse-old` (a dependency of `make test`) from requirements-synapse-old.txt.
SYNAPSE_OLD_PYTHON = ROOT / ".venv-synapse-old" / "bin" / "python"


@pytest.fixture(scope="session")
def old_synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synapse]:
    """Synapse 1.130 from its own venv, on SQLite, with the same config as `synapse`."""
    # A bare `pytest` run builds the venv too, as `mbp` builds the plugin; make makes it once.
    subprocess.run(["make", "-s", "venv-synapse-old"], cwd=ROOT, check=True)
    server = Synapse(tmp_path_factory.mktemp("synapse-old"), python=SYNAPSE_OLD_PYTHON)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def old_maubot_server(
    old_synapse: Synapse, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MaubotServer]:
    """A maubot on the older homeserver. SQLite plugin databases only: what differs there is the
    room version, which the plugin database does not see."""
    server = MaubotServer(tmp_path_factory.mktemp("maubot-old"), old_synapse.url, None)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def old_make_user(
    old_synapse: Synapse,
) -> AsyncIterator[Callable[[str], Awaitable[MatrixUser]]]:
    """Like `make_user`, on the older homeserver: users must be registered where they talk."""
    users = Users(old_synapse)
    yield users.make
    await users.close()


@pytest.fixture
async def old_bot(
    old_maubot_server: MaubotServer, old_synapse: Synapse, mbp: Path, old_make_user: Callable
) -> AsyncIterator[Deployment]:
    """Like `bot`, on the older homeserver."""
    async with deployed(old_maubot_server, old_synapse, mbp, old_make_user) as deployment:
        yield deployment


# Encrypted rooms: a maubot with crypto, crypto-capable users, a bot on that maubot.
# `maubot_server` above stays the maubot without crypto that every other test runs against.


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
            localpart = f"{name}_{uuid.uuid4().hex[:10]}"
            user = await CryptoMatrixUser.register(synapse, localpart)
            closing.push_async_callback(user.close)
            return user

        yield make


@pytest.fixture
async def crypto_bot(
    crypto_maubot_server: MaubotServer, synapse: Synapse, mbp: Path, make_user: Callable
) -> AsyncIterator[Deployment]:
    """`bot` on the maubot with crypto: its client has a device and an OlmMachine."""
    async with deployed(crypto_maubot_server, synapse, mbp, make_user) as deployment:
        yield deployment
