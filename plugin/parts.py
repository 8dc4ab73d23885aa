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


def build(
    client: MaubotMatrixClient,
    transport: Transport,
    store: Store,
    http: aiohttp.ClientSession,
    metrics: Metrics,
    settings: Callable[[], Settings],
    log: Logger,
) -> Parts:
    server_name = client.mxid.split(":", 1)[1]
    outbox = Outbox(client, transport, metrics, log)
    record = MatrixRecord(client)
    links = SpaceLinks(outbox, server_name)
    bindings = Bindings(record, store)
    creator = RoomCreator(client)
    identity = AgentIdentity(client, outbox, store, http, log)
    rooms = WorkingRooms(client, store, outbox, links, bindings, creator, identity, settings, log)
    onboarding = Onboarding(client, store, record, rooms, settings, log)
    membership = MembershipHandler(client, store, outbox, onboarding, rooms, record, settings, log)
    encryption = Encryption(client, log.getChild("encryption"))
    context = ContextManager(store, bindings, ThreadRoots(encryption))
    quota = Quota(store, settings)
    refusals = Refusals(outbox, store)
    dispatch_log = log.getChild("dispatch")
    batch = GroupCommit(store, dispatch_log)
    delivery = Delivery(batch, dispatch_log)
    running = RunningAnswers()
    turns = _turns(
        client, store, context, quota, refusals, delivery, running, outbox, http, metrics, settings
    )
    queues = RoomQueues(turns, dispatch_log)
    intake = Intake(
        client.mxid, store, queues, quota, refusals, delivery, metrics, settings, dispatch_log
    )
    undecryptable = Undecryptable(
        client, encryption, store, intake, refusals, metrics, settings, dispatch_log
    )
    reactions = Reactions(
        client, encryption, store, queues, running, http, metrics, settings, dispatch_log
    )
    reconciler = Reconciler(client, store, record, links, log, membership.handle_invite)
    catch_up = CatchUp(
        client,
        store,
        outbox,
        intake,
        queues,
        quota,
        encryption,
        undecryptable,
        batch,
        settings,
        log,
    )
    startup = Startup(reconciler, catch_up, metrics, log)
    router = CommandRouter(store, outbox, settings, log)
    sharing = _sharing(
        client, encryption, store, bindings, context, onboarding, outbox, settings, log
    )
    for group in (
        RoomCommands(onboarding, rooms),
        ContextCommands(context, intake),
        MemoryCommands(store),
        sharing,
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
        queues,
        intake,
        undecryptable,
        reactions,
        refusals,
        router,
        startup,
    )


def _sharing(
    client: MaubotMatrixClient,
    encryption: Encryption,
    store: Store,
    bindings: Bindings,
    context: ContextManager,
    onboarding: Onboarding,
    outbox: Outbox,
    settings: Callable[[], Settings],
    log: Logger,
) -> SharingCommands:
    forks = Forks(client, encryption, store, context, onboarding, outbox, settings, log)
    return SharingCommands(Collaborators(client, bindings, settings, log), forks)


def _turns(
    client: MaubotMatrixClient,
    store: Store,
    context: ContextManager,
    quota: Quota,
    refusals: Refusals,
    delivery: Delivery,
    running: RunningAnswers,
    outbox: Outbox,
    http: aiohttp.ClientSession,
    metrics: Metrics,
    settings: Callable[[], Settings],
) -> TurnRunner:
    """The turn and what it calls: the agent, compaction, and the media on both sides."""
    log = delivery.log
    caller = AgentCaller(http, TypingNotices(client, log), metrics, settings)
    compaction = Compaction(store, context, caller, outbox, metrics, log)
    speech = Speech(http)
    media_in = MediaIn(Downloads(client, log), speech, outbox, settings, log)
    media_out = MediaOut(media_in, caller, speech, outbox, metrics, log)
    return TurnRunner(
        store,
        context,
        quota,
        refusals,
        delivery,
        compaction,
        ShowChain(log),
        running,
        media_in,
        media_out,
        outbox,
        metrics,
        settings,
        log,
    )
