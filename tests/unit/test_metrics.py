"""The /metrics text: what Prometheus scrapes, in its exposition format."""

from __future__ import annotations

import re

from plugin.ops.metrics import LATENCY_BUCKETS, RECENT_ERRORS, Metrics

SAMPLE = re.compile(r'^[a-z_]+(\{[a-z_]+="(?:[^"\\]|\\.)*"\})? -?[0-9.e+]+$')


def samples(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if not line.startswith("#")
    }


def test_every_line_is_valid_exposition_format() -> None:
    metrics = Metrics()
    metrics.message_in()
    metrics.reply('we"ird\\agent', 0.3)
    metrics.error("backend", "boom\nsecond line", agent_id="x")
    text = metrics.render(queue_depth=2)
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# "):
            assert re.match(r"^# (HELP|TYPE) agentspaces_[a-z_]+ ", line), line
        else:
            assert SAMPLE.match(line), line


def test_counts_messages_replies_errors_and_queue() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.message_in()
    metrics.message_out()
    metrics.reply("echo", 0.02)
    metrics.reply("echo", 0.2)
    metrics.reply("gpt", 7.0)
    metrics.error("backend", "timed out", agent_id="gpt")
    metrics.error("config", "default_agent: 'x' is not one of the agents")
    values = samples(metrics.render(queue_depth=4))
    assert values["agentspaces_messages_in_total"] == 3
    assert values["agentspaces_messages_out_total"] == 1
    assert values['agentspaces_replies_total{agent="echo"}'] == 2
    assert values['agentspaces_replies_total{agent="gpt"}'] == 1
    assert values['agentspaces_errors_total{kind="backend"}'] == 1
    assert values['agentspaces_errors_total{kind="config"}'] == 1
    assert values["agentspaces_queue_depth"] == 4


def test_latency_histogram_is_cumulative() -> None:
    metrics = Metrics()
    for seconds in (0.02, 0.2, 7.0):
        metrics.reply("echo", seconds)
    values = samples(metrics.render(queue_depth=0))
    assert values['agentspaces_backend_latency_seconds_bucket{le="0.05"}'] == 1
    assert values['agentspaces_backend_latency_seconds_bucket{le="0.25"}'] == 2
    assert values['agentspaces_backend_latency_seconds_bucket{le="5"}'] == 2
    assert values['agentspaces_backend_latency_seconds_bucket{le="10"}'] == 3
    assert values['agentspaces_backend_latency_seconds_bucket{le="+Inf"}'] == 3
    assert values["agentspaces_backend_latency_seconds_count"] == 3
    assert abs(values["agentspaces_backend_latency_seconds_sum"] - 7.22) < 1e-9
    bounds = [float(b) for b in LATENCY_BUCKETS]
    assert bounds == sorted(bounds)


def test_reconciliation_duration_and_counts() -> None:
    metrics = Metrics()
    metrics.reconciled(1.5, {"rooms": 3, "users": 2})
    values = samples(metrics.render(queue_depth=0))
    assert values["agentspaces_reconcile_duration_seconds"] == 1.5
    assert values['agentspaces_reconcile_items{item="rooms"}'] == 3
    assert values['agentspaces_reconcile_items{item="users"}'] == 2


def test_agent_health_and_recent_errors() -> None:
    metrics = Metrics()
    metrics.error("backend", "HTTP 502", agent_id="gpt")
    assert metrics.agent_health["gpt"] == "failing: HTTP 502"
    metrics.reply("gpt", 1.0)
    assert metrics.agent_health["gpt"] == "ok"
    for n in range(RECENT_ERRORS + 5):
        metrics.error("dispatch", f"error {n}")
    assert len(metrics.recent_errors) == RECENT_ERRORS
    assert metrics.recent_errors[-1].message == f"error {RECENT_ERRORS + 4}"
