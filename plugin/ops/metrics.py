"""In-memory counters of one plugin instance, rendered in the Prometheus text format."""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Mapping
from typing import Any

from attrs import define, field

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
RECENT_ERRORS = 50


@define
class ErrorRecord:
    at: float
    kind: str
    message: str


@define
class Metrics:
    messages_in: int = 0
    messages_out: int = 0
    # Encrypted messages the bot gave up on: their key never came.
    undecryptable_messages: int = 0
    replies_by_agent: Counter[str] = field(factory=Counter)
    errors_by_kind: Counter[str] = field(factory=Counter)
    latency_buckets: Counter[float] = field(factory=Counter)
    latency_sum: float = 0.0
    latency_count: int = 0
    reconcile_duration: float = 0.0
    reconcile_counts: dict[str, int] = field(factory=dict)
    recent_errors: deque[ErrorRecord] = field(factory=lambda: deque(maxlen=RECENT_ERRORS))
    # agent id -> "ok" or the last failure, as the status page shows it.
    agent_health: dict[str, str] = field(factory=dict)
    # Keyed by configured agent ids (and ratings), so bounded by the config.
    tokens_by_agent: Counter[str] = field(factory=Counter)
    feedback_by_agent: Counter[tuple[str, str]] = field(factory=Counter)

    def message_in(self) -> None:
        self.messages_in += 1

    def message_out(self) -> None:
        self.messages_out += 1

    def undecryptable(self) -> None:
        self.undecryptable_messages += 1

    def reply(self, agent_id: str, seconds: float) -> None:
        """One finished agent reply and how long the backend took."""
        self.replies_by_agent[agent_id] += 1
        self.agent_health[agent_id] = "ok"
        self.latency_sum += seconds
        self.latency_count += 1
        for bound in LATENCY_BUCKETS:
            if seconds <= bound:
                self.latency_buckets[bound] += 1

    def tokens(self, agent_id: str, tokens: int) -> None:
        """Tokens one answer cost: as the server reported them, else estimated."""
        self.tokens_by_agent[agent_id] += tokens

    def feedback(self, agent_id: str, rating: str) -> None:
        self.feedback_by_agent[(agent_id, rating)] += 1

    def error(self, kind: str, message: str, agent_id: str | None = None) -> None:
        """`message` is shown on the status page: it must never hold a secret."""
        self.errors_by_kind[kind] += 1
        if agent_id is not None:
            self.agent_health[agent_id] = f"failing: {message}"
        self.recent_errors.append(ErrorRecord(time.time(), kind, message))

    def reconciled(self, duration: float, counts: dict[str, Any]) -> None:
        self.reconcile_duration = duration
        self.reconcile_counts = {k: int(v) for k, v in counts.items()}

    def _latency(self) -> list[str]:
        """The backend latency histogram's lines."""
        buckets = [(f'{{le="{b:g}"}}', self.latency_buckets[b]) for b in LATENCY_BUCKETS]
        buckets.append(('{le="+Inf"}', self.latency_count))
        name = "agentspaces_backend_latency_seconds"
        lines = [f"# HELP {name} Agent backend latency.", f"# TYPE {name} histogram"]
        lines += [f"{name}_bucket{labels} {value:g}" for labels, value in buckets]
        lines.append(f"{name}_sum {self.latency_sum:g}")
        lines.append(f"{name}_count {self.latency_count}")
        return lines

    def render(self, queue_depth: int) -> str:
        lines = [*self._counters(), *self._latency(), *self._gauges(queue_depth)]
        return "\n".join(lines) + "\n"

    def _counters(self) -> list[str]:
        return [
            *_family("messages_in_total", "User messages sent to agents.", self.messages_in),
            *_family("messages_out_total", "Messages the bot sent.", self.messages_out),
            *_family(
                "undecryptable_total",
                "Encrypted messages the bot could not decrypt, after waiting for their keys.",
                self.undecryptable_messages,
            ),
            *_family(
                "replies_total", "Agent replies by agent.", _by("agent", self.replies_by_agent)
            ),
            *_family(
                "tokens_total",
                "Tokens of the agents' answers by agent (reported by the server, else estimated).",
                _by("agent", self.tokens_by_agent),
            ),
            *_family(
                "feedback_total",
                "Reactions of feedback on answers by agent and rating (up or down).",
                [
                    (f'{{agent="{_escape(a)}",rating="{_escape(r)}"}}', n)
                    for (a, r), n in sorted(self.feedback_by_agent.items())
                ],
            ),
            *_family("errors_total", "Errors by kind.", _by("kind", self.errors_by_kind)),
        ]

    def _gauges(self, queue_depth: int) -> list[str]:
        return [
            *_family("queue_depth", "Messages waiting for an agent.", queue_depth, "gauge"),
            *_family(
                "reconcile_duration_seconds",
                "Duration of the last reconciliation.",
                self.reconcile_duration,
                "gauge",
            ),
            *_family(
                "reconcile_items",
                "Counts of the last reconciliation.",
                _by("item", self.reconcile_counts),
                "gauge",
            ),
        ]


Samples = list[tuple[str, float]]


def _family(name: str, help: str, samples: Samples | float, kind: str = "counter") -> list[str]:
    """One metric's lines; a single number is its one unlabelled sample."""
    if not isinstance(samples, list):
        samples = [("", samples)]
    name = f"agentspaces_{name}"
    lines = [f"# HELP {name} {help}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{labels} {value:g}" for labels, value in samples]
    return lines


def _by(label: str, counts: Mapping[str, float]) -> Samples:
    return [(f'{{{label}="{_escape(k)}"}}', v) for k, v in sorted(counts.items())]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
