"""What a start runs: reconciliation before the handlers exist, then the catch-up."""

from __future__ import annotations

import asyncio
from logging import Logger

from attrs import define, field

from ..ops.metrics import Metrics
from .catchup import CatchUp, CatchUpReport
from .reconcile import Reconciler, ReconcileReport


@define(eq=False)
class Startup:
    reconciler: Reconciler
    catch_up: CatchUp
    metrics: Metrics
    log: Logger
    last_report: ReconcileReport | None = field(init=False, default=None)
    last_catch_up: CatchUpReport | None = field(init=False, default=None)
    _reconcile_task: asyncio.Task[ReconcileReport | None] | None = field(init=False, default=None)
    _catch_up_task: asyncio.Task[None] | None = field(init=False, default=None)

    async def reconcile_first(self, budget: float) -> None:
        """Reconciles, for at most `budget` seconds; past it, the rest runs in the background."""
        self._reconcile_task = asyncio.create_task(self.reconcile())
        try:
            await asyncio.wait_for(asyncio.shield(self._reconcile_task), budget)
        except asyncio.TimeoutError:
            self.log.warning(
                f"Reconciliation takes longer than {budget} s; "
                "starting the handlers, it completes in the background"
            )

    def reports(self) -> list[str]:
        """The last reconciliation's and catch-up's summaries, as admins and the status page see
        them."""
        return [
            self.last_report.summary() if self.last_report else "No reconciliation has run yet.",
            self.last_catch_up.summary() if self.last_catch_up else "No catch-up has run yet.",
        ]

    def start_catch_up(self) -> None:
        self._catch_up_task = asyncio.create_task(self._catch_up())

    async def stop(self) -> None:
        tasks = [t for t in (self._reconcile_task, self._catch_up_task) if t is not None]
        for task in tasks:
            task.cancel()
        # Awaited, so that nothing of theirs queues work after the queues stop.
        await asyncio.gather(*tasks, return_exceptions=True)

    async def reconcile(self) -> ReconcileReport | None:
        try:
            report = await self.reconciler.run()
        except Exception as e:
            self.log.exception("Reconciliation failed; routing with the cached state")
            self.metrics.error("reconcile", str(e))
            return None
        self.last_report = report
        self.metrics.reconciled(report.duration, report.counts())
        self.log.info(report.summary())
        return report

    async def _catch_up(self) -> None:
        # Catch-up answers from the reconciled state, so it waits for a slow reconciliation.
        if self._reconcile_task is not None:
            await self._reconcile_task
        try:
            self.last_catch_up = await self.catch_up.run()
        except Exception as e:
            self.log.exception("Catch-up failed")
            self.metrics.error("catch_up", str(e))
