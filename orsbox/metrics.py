"""Prometheus metrics (`GET /metrics`), with the official client and a registry per server.

Labels are bounded: environments are the catalog's (and `sandbox`), tools the environment's own
(anything else a client names counts as `other`), end reasons and refusals a fixed set of words.
Live sessions are read from the registry when scraped, so they cannot drift from it.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

#: How a session's end reason reads, as a label: the first of these its text starts with, else "other".
END_REASONS = (
    ("deleted", "deleted"), ("stopped", "stopped"), ("idle", "idle"), ("reached its max lifetime", "lifetime"),
    ("the sandbox's agent", "agent_gone"), ("the server shut down", "shutdown"), ("setup", "setup_failed"),
    ("ended by the operator", "operator"),
)


def end_reason(reason: str) -> str:
    for prefix, label in END_REASONS:
        if reason.startswith(prefix):
            return label
    return "other"


class LiveSessions(Collector):
    """`orsbox_sessions{environment, state}`: the registry's live sessions, counted when scraped."""

    def __init__(self, states: Callable[[], Iterable[tuple[str, str]]]) -> None:
        self.states = states

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("orsbox_sessions", "Live sessions by environment and state",
                                   labels=["environment", "state"])
        for (environment, state), count in sorted(Tally(self.states()).items()):
            family.add_metric([environment, state], count)
        yield family


class PoolSizes(Collector):
    """`orsbox_pool_containers{environment, state}`: warm pool containers ready or starting, when scraped."""

    def __init__(self, sizes: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        self.sizes = sizes

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("orsbox_pool_containers", "Warm pool containers by environment and state",
                                   labels=["environment", "state"])
        for environment, ready, starting in sorted(self.sizes()):
            family.add_metric([environment, "ready"], ready)
            family.add_metric([environment, "starting"], starting)
        yield family


class Metrics:
    """What orsbox counts and times; `render()` is the exposition `/metrics` answers."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.created = Counter("orsbox_sessions_created", "Sessions created", ["environment", "kind"], registry=r)
        self.ended = Counter("orsbox_sessions_ended", "Sessions ended, by reason", ["environment", "reason"],
                             registry=r)
        self.refused = Counter("orsbox_admission_refusals", "Creates refused by admission (429)", ["limit"],
                               registry=r)
        self.setup = Histogram("orsbox_setup_seconds", "Create until ready (container start and setup)",
                               ["environment"], buckets=SECONDS, registry=r)
        self.container_start = Histogram("orsbox_container_start_seconds", "Sandbox start with its agent connected",
                                         ["environment"], buckets=SECONDS, registry=r)
        self.container_remove = Histogram("orsbox_container_remove_seconds", "Sandbox removal",
                                          ["environment"], buckets=SECONDS, registry=r)
        self.calls = Histogram("orsbox_call_seconds", "Tool calls and sandbox runs", ["environment", "tool"],
                               buckets=SECONDS, registry=r)
        self.call_outcomes = Counter("orsbox_call_outcomes", "Calls that timed out or lost a process to the "
                                     "memory killer", ["environment", "outcome"], registry=r)
        self.egress_bytes = Counter("orsbox_egress_bytes", "Bytes relayed by the egress proxies (at each "
                                    "connection's end)", ["direction"], registry=r)
        self.egress_denials = Counter("orsbox_egress_denials", "Requests the egress proxies refused", ["status"],
                                      registry=r)
        self.pool_takes = Counter("orsbox_pool_takes", "Creates of pooled environments: a warm container (hit) "
                                  "or a cold start (miss)", ["environment", "outcome"], registry=r)
        self.engine_up = Gauge("orsbox_engine_up", "1 while the container engine answers", registry=r)
        self.engine_up.set(1)

    def watch_sessions(self, states: Callable[[], Iterable[tuple[str, str]]]) -> None:
        self.registry.register(LiveSessions(states))

    def watch_pool(self, sizes: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        self.registry.register(PoolSizes(sizes))

    def session_ended(self, environment: str, reason: str) -> None:
        self.ended.labels(environment, end_reason(reason)).inc()

    def call_finished(self, environment: str, tool: str, seconds: float, result: object) -> None:
        self.calls.labels(environment, tool).observe(seconds)
        metadata = _metadata(result)
        for outcome in ("timed_out", "oom_killed"):
            if metadata.get(outcome) is True:
                self.call_outcomes.labels(environment, outcome).inc()

    def egress(self, sent: int, received: int) -> None:
        self.egress_bytes.labels("sent").inc(sent)
        self.egress_bytes.labels("received").inc(received)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _metadata(result: object) -> dict[str, object]:
    """A call result's metadata (ORS tool output) or the result itself (a sandbox run), as far as it is a dict."""
    if not isinstance(result, dict):
        return {}
    output = result.get("output")
    metadata = output.get("metadata") if isinstance(output, dict) else result
    return metadata if isinstance(metadata, dict) else {}
