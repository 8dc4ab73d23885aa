"""Admin commands: the last reconciliation report, and a reconciliation on demand."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from .commands import CommandRouter, Invocation
from .reconcile import ReconcileReport


def register(
    router: CommandRouter,
    last_report: Callable[[], ReconcileReport | None],
    reconcile: Callable[[], Awaitable[ReconcileReport | None]],
) -> None:
    async def status(inv: Invocation) -> str:
        report = last_report()
        return report.summary() if report else "No reconciliation has run yet."

    async def run(inv: Invocation) -> str:
        report = await reconcile()
        return report.summary() if report else "Reconciliation failed; the log says why."

    router.add("admin status", "", "Show the last reconciliation report", status, admin=True)
    router.add("admin reconcile", "", "Rebuild the database from Matrix now", run, admin=True)
