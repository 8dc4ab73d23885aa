"""Builds the plugin's parts and wires them together; `bot.py` and the tests share it."""

from __future__ import annotations

from collections.abc import Callable
from logging import Logger

import aiohttp
from attrs import define
from maubot.matrix import MaubotMatrixClient

from .commands.admin import AdminCommands
from .commands.context import ContextCommands
from .commands.memory import MemoryCommands
from .commands.rooms import RoomCommands
from .commands.router import CommandRouter
from .commands.sharing import SharingCommands
from .commands.usage import UsageCommands
from .commands.voice import VoiceCommands
from .conversation.agent_call import AgentCaller
from .conversation.compaction import Compaction
from .conversation.context import ContextManager
from .conversation.controls import RunningAnswers
from .conversation.delivery import Delivery
from .conversation.intake import Intake
from .conversation.matrix_retry import MatrixRetry
from .conversation.media_in import MediaIn
from .conversation.media_out import MediaOut
from .conversation.pipeline import ShowChain
from .conversation.queues import RoomQueues
from .conversation.quota import Quota
from .conversation.reactions import Reactions
from .conversation.refusals import Refusals
from .conversation.threads import ThreadRoots
from .conversation.turn import TurnRunner
from .conversation.typing import TypingNotices
from .conversation.undecryptable import Undecryptable
from .db import Store
from .db.batch import GroupCommit
from .matrix.creation import RoomCreator
from .matrix.encryption import Encryption
from .matrix.identity import AgentIdentity
from .matrix.links import SpaceLinks
from .matrix.outbox import Outbox, Transport
from .matrix.record import MatrixRecord
from .media.speech import Speech
from .media.transfer import Downloads
from .ops.metrics import Metrics
from .ops.settings import Settings
from .spaces.bindings import Bindings
from .spaces.collaborators import Collaborators
from .spaces.forks import Forks
from .spaces.membership import MembershipHandler
from .spaces.onboarding import Onboarding
from .spaces.rooms import WorkingRooms
from .startup.catchup import CatchUp
from .startup.lifecycle import Startup
from .startup.reconcile import Reconciler


@define
class Parts:
    store: Store
    outbox: Outbox
    rooms: WorkingRooms
    onboarding: Onboarding
    membership: MembershipHandler
    context: ContextManager
    queues: RoomQueues
    intake: Intake
    undecryptable: Undecryptable
    reactions: Reactions
    refusals: Refusals
    router: CommandRouter
    startup: Startup


@define
class _Common:
    """What most parts take: the client, the store, the outbox and the plugin's services."""

    client: MaubotMatrixClient
    store: Store
    outbox: Outbox
    encryption: Encryption
    http: aiohttp.ClientSession
    metrics: Metrics
    settings: Callable[[], Settings]
    log: Logger


@define
class _Conversation:
    quota: Quota
    refusals: Refusals
    batch: GroupCommit
    queues: RoomQueues
    intake: Intake
    undecryptable: Undecryptable
    reactions: Reactions


def build(
    client: MaubotMatrixClient,
    transport: Transport,
    store: Store,
    http: aiohttp.ClientSession,
    metrics: Metrics,
    settings: Callable[[], Settings],
    log: Logger,
) -> Parts:
    outbox = Outbox(client, transport, metrics, log)
    encryption = Encryption(client, log.getChild("encryption"))
    c = _Common(client, store, outbox, encryption, http, metrics, settings, log)
    record = MatrixRecord(client)
    links = SpaceLinks(outbox, client.mxid.split(":", 1)[1])
    bindings = Bindings(record, store)
    identity = AgentIdentity(client, outbox, store, http, log)
    creator = RoomCreator(client)
    rooms = WorkingRooms(client, store, outbox, links, bindings, creator, identity, settings, log)
    onboarding = Onboarding(client, store, record, rooms, settings, log)
    membership = MembershipHandler(client, store, outbox, onboarding, rooms, record, settings, log)
    context = ContextManager(store, bindings, ThreadRoots(encryption))
    conv = _conversation(c, context)
    reconciler = Reconciler(client, store, record, links, log, membership.handle_invite)
    startup = Startup(reconciler, _catch_up(c, conv), metrics, log)
    router = CommandRouter(store, outbox, settings, log)
    for group in (
        RoomCommands(onboarding, rooms),
        ContextCommands(context, conv.intake),
        MemoryCommands(store),
        _sharing(c, bindings, context, onboarding),
        UsageCommands(store),
        VoiceCommands(bindings),
        AdminCommands(startup.reports, startup.reconcile),
    ):
        group.register(router)
    return Parts(
        store,
        outbox,
        rooms,
        onboarding,
        membership,
        context,
        conv.queues,
        conv.intake,
        conv.undecryptable,
        conv.reactions,
        conv.refusals,
        router,
        startup,
    )


def _conversation(c: _Common, context: ContextManager) -> _Conversation:
    """The message path: intake, the per-room queues and the turn."""
    log = c.log.getChild("dispatch")
    quota = Quota(c.store, c.settings)
    refusals = Refusals(c.outbox, c.store)
    batch = GroupCommit(c.store, log)
    delivery = Delivery(batch, log)
    running = RunningAnswers()
    turns = _turns(c, log, context, quota, refusals, delivery, running)
    queues = RoomQueues(turns, log)
    intake = Intake(
        c.client.mxid, c.store, queues, quota, refusals, delivery, c.metrics, c.settings, log
    )
    undecryptable = Undecryptable(
        c.client, c.encryption, c.store, intake, refusals, c.metrics, c.settings, log
    )
    reactions = Reactions(
        c.client, c.encryption, c.store, queues, running, c.http, c.metrics, c.settings, log
    )
    return _Conversation(quota, refusals, batch, queues, intake, undecryptable, reactions)


def _turns(
    c: _Common,
    log: Logger,
    context: ContextManager,
    quota: Quota,
    refusals: Refusals,
    delivery: Delivery,
    running: RunningAnswers,
) -> TurnRunner:
    """The turn and what it calls: the agent, compaction, and the media on both sides."""
    caller = AgentCaller(c.http, TypingNotices(c.client, log), c.metrics, c.settings)
    compaction = Compaction(c.store, context, caller, c.outbox, c.metrics, log)
    speech = Speech(c.http)
    media_in = MediaIn(Downloads(c.client, log), speech, c.outbox, c.settings, log)
    media_out = MediaOut(media_in, caller, speech, c.outbox, c.metrics, log)
    return TurnRunner(
        c.store,
        context,
        quota,
        refusals,
        delivery,
        compaction,
        ShowChain(log),
        running,
        media_in,
        media_out,
        c.outbox,
        MatrixRetry(c.outbox, log),
        c.metrics,
        c.settings,
        log,
    )


def _catch_up(c: _Common, conv: _Conversation) -> CatchUp:
    return CatchUp(
        c.client,
        c.store,
        c.outbox,
        conv.intake,
        conv.queues,
        conv.quota,
        c.encryption,
        conv.undecryptable,
        conv.batch,
        c.settings,
        c.log,
    )


def _sharing(
    c: _Common, bindings: Bindings, context: ContextManager, onboarding: Onboarding
) -> SharingCommands:
    forks = Forks(c.client, c.encryption, c.store, context, onboarding, c.outbox, c.settings, c.log)
    return SharingCommands(Collaborators(c.client, bindings, c.settings, c.log), forks)
