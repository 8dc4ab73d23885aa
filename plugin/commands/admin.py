"""Admin commands: the last reconciliation and catch-up reports, and a reconciliation on
demand."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from attrs import define

from ..startup.reconcile import ReconcileReport
from .router import CommandRouter, Invocation


@define(eq=False)
class AdminCommands:
    reports: Callable[[], list[str]]
    reconcile: Callable[[], Awaitable[ReconcileReport | None]]

    def register(self, router: CommandRouter) -> None:
        router.add(
            "admin status",
            "",
            "Show the last reconciliation and catch-up reports",
            self.status,
            admin=True,
        )
        router.add(
            "admin reconcile", "", "Rebuild the database from Matrix now", self.run, admin=True
        )

    async def status(self, inv: Invocation) -> str:
        return "\n\n".join(self.reports())

    async def run(self, inv: Invocation) -> str:
        report = await self.reconcile()
        return report.summary() if report else "Reconciliation failed; the log says why."
