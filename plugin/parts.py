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
from .commands.voice import VoiceCommands
from .conversation.agent_call import AgentCaller
from .conversation.compaction import Compaction
from .conversation.context import ContextManager
from .conversation.delivery import Delivery
from .conversation.intake import Intake
from .conversation.media_in import MediaIn
from .conversation.media_out import MediaOut
from .conversation.pipeline import ShowChain
from .conversation.queues import RoomQueues
from .conversation.quota import Quota
from .conversation.refusals import Refusals
from .conversation.turn import TurnRunner
from .conversation.typing import TypingNotices
from .db import Store
from .db.batch import GroupCommit
from .matrix.creation import RoomCreator
from .matrix.links import SpaceLinks
from .matrix.outbox import Outbox, Transport
from .matrix.record import MatrixRecord
from .media.speech import Speech
from .media.transfer import Downloads
from .ops.metrics import Metrics
from .ops.settings import Settings
from .spaces.bindings import Bindings
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
    rooms = WorkingRooms(client, store, outbox, links, bindings, creator, settings, log)
    onboarding = Onboarding(client, store, record, rooms, settings, log)
    membership = MembershipHandler(client, store, outbox, onboarding, rooms, record, settings, log)
    context = ContextManager(store, bindings)
    quota = Quota(store, settings)
    refusals = Refusals(outbox, store)
    caller = AgentCaller(http, TypingNotices(client, log), metrics, settings)
    dispatch_log = log.getChild("dispatch")
    delivery = Delivery(GroupCommit(store, dispatch_log), dispatch_log)
    compaction = Compaction(store, context, caller, outbox, metrics, settings, dispatch_log)
    speech = Speech(http)
    media_in = MediaIn(Downloads(client, dispatch_log), speech, outbox, settings, dispatch_log)
    media_out = MediaOut(media_in, caller, speech, outbox, metrics, dispatch_log)
    turns = TurnRunner(
        store,
        context,
        quota,
        refusals,
        delivery,
        compaction,
        ShowChain(),
        media_in,
        media_out,
        outbox,
        metrics,
        settings,
        dispatch_log,
    )
    queues = RoomQueues(turns, dispatch_log)
    intake = Intake(
        client.mxid, store, queues, quota, refusals, delivery, metrics, settings, dispatch_log
    )
    reconciler = Reconciler(client, store, record, links, log, membership.handle_invite)
    catch_up = CatchUp(client, store, outbox, intake, queues, quota, settings, log)
    startup = Startup(reconciler, catch_up, metrics, log)
    router = CommandRouter(store, outbox, settings, log)
    RoomCommands(onboarding, rooms).register(router)
    ContextCommands(context, intake).register(router)
    MemoryCommands(store).register(router)
    VoiceCommands(bindings).register(router)
    AdminCommands(lambda: startup.last_report, startup.reconcile).register(router)
    return Parts(
        store,
        outbox,
        rooms,
        onboarding,
        membership,
        context,
        queues,
        intake,
        refusals,
        router,
        startup,
    )
