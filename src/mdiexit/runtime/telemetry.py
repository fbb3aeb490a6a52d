"""Prometheus metrics of a node (DESIGN §10), over HTTP on ``metrics_port`` (cluster file) or --metrics-port.

Every value is read from the node at scrape time (a collector, asking the node's loop, which owns them), so the
hot paths pay nothing, and the counts are the very counters the run summary reports. The one exception is the
latency histogram, observed by the source as each item settles. The endpoint binds to loopback unless told
otherwise: metrics carry no secrets, but nothing reachable from the network should be open by default (scrape
through a local agent, or pass --metrics-addr with care).

The metrics are listed once, in METRICS below (docs/reference/metrics.md is generated from it). A source's series
carry a ``source`` label (a site may have several sources, each serving its own endpoint).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from mdiexit.protocol.messages import REJECT_REASONS
from mdiexit.runtime.loop import LoopTimeout
from mdiexit.runtime.nodestats import progress_report

if TYPE_CHECKING:
    from mdiexit.runtime.node import NodeProcess
    from mdiexit.runtime.source import SourceProcess

log = logging.getLogger("mdiexit.metrics")
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LOOPBACK = "127.0.0.1"

# Every metric a node serves: name -> (kind, label, which nodes serve it, what it says). Counters gain _total.
METRICS: dict[str, tuple[str, str, str, str]] = {
    "mdiexit_backlog_seconds": ("gauge", "node", "every node", "estimated seconds of queued compute"),
    "mdiexit_queue_items": ("gauge", "", "every node", "items queued at this node"),
    "mdiexit_tasks": ("counter", "task", "every node", "tasks run, by task"),
    "mdiexit_busy_seconds": ("counter", "", "every node", "emulated device time spent computing"),
    "mdiexit_utilization_ratio": ("gauge", "", "every node", "busy time over time running"),
    "mdiexit_sent_bytes": ("counter", "", "every node", "bytes sent on every link"),
    "mdiexit_bad_messages": ("counter", "", "every node", "malformed messages dropped"),
    "mdiexit_rejected_messages": ("counter", "reason", "every node", "well-formed messages refused, by reason"),
    "mdiexit_energy_joules": ("counter", "", "every node with a power model or meter",
                              "joules so far: metered, else by the node's power model"),
    "mdiexit_items": ("counter", "outcome", "source",
                      "offered items by outcome: result, rejected, expired, failed"),
    "mdiexit_offered_items": ("counter", "", "source", "items offered to the service"),
    "mdiexit_items_by_exit": ("counter", "exit", "source", "results by the exit they left the model at"),
    "mdiexit_items_by_version": ("counter", "version", "source", "results by the package version that answered"),
    "mdiexit_rollout_share_ratio": ("gauge", "", "source", "the share of admitted items on a roll-out's new "
                                    "version (`mdiexit rollout`; 1 once one completed, 0 with none)"),
    "mdiexit_admission_rate_per_second": ("gauge", "", "source", "the admission policy's rate"),
    "mdiexit_admission_queue_items": ("gauge", "", "source", "requests waiting at the admission gate"),
    "mdiexit_in_flight_items": ("gauge", "", "source", "admitted items not yet settled"),
    "mdiexit_node_up": ("gauge", "node", "source", "1 while the source hears the node"),
    "mdiexit_reported_backlog_seconds": ("gauge", "node", "source", "each node's last reported backlog"),
    "mdiexit_latency_seconds": ("histogram", "", "source", "admission to result"),
    "mdiexit_joules_per_item": ("gauge", "", "source, when a node is counted",
                                "the counted nodes' joules so far per completed item"),
}


def _help(name: str) -> str:
    return METRICS[name][3]


def _gauge(name: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, _help(name), labels=list(labels or {}))
    g.add_metric(list((labels or {}).values()), value)
    return g


def _counter(name: str, values: dict[str, float], fixed: dict[str, str] | None = None) -> CounterMetricFamily:
    """``values`` by METRICS' label (one value, keyed "", where it has none); ``fixed``: labels every series has."""
    by = METRICS[name][1]
    fixed = fixed or {}
    c = CounterMetricFamily(name, _help(name), labels=[*fixed, *([by] if by else [])])
    for label, v in values.items():
        c.add_metric([*fixed.values(), *([label] if by else [])], v)
    return c


class LoopCollector(Collector):
    """A node's metric families, read on the node's loop, which owns what they count (none if it does not answer:
    a node stopping)."""

    def __init__(self, node: NodeProcess, families: Callable[[NodeProcess], Iterator]):
        self.node, self.families = node, families

    def collect(self):
        try:
            return self.node.loop.ask(lambda: list(self.families(self.node)), timeout_s=2.0)
        except LoopTimeout:
            return []


def node_families(n: NodeProcess) -> Iterator:
    t = n.clock.now()
    yield _gauge("mdiexit_backlog_seconds", n.core.backlog_s(t), {"node": n.name})
    yield _gauge("mdiexit_queue_items", len(n.core.queue))
    yield _counter("mdiexit_tasks", {str(k): v for k, v in sorted(n.core.tasks_run.items())})
    yield _counter("mdiexit_busy_seconds", {"": n.busy_s})
    yield _gauge("mdiexit_utilization_ratio", n.busy_s / max(t - n.started_at, 1e-9))
    yield _counter("mdiexit_sent_bytes", {"": n.egress.bytes_sent})
    yield _counter("mdiexit_bad_messages", {"": n.bad_messages})
    yield _counter("mdiexit_rejected_messages", {r: n.rejected[r] for r in REJECT_REASONS})
    if (joules := progress_report(n, t).get("joules")) is not None:
        yield _counter("mdiexit_energy_joules", {"": joules})


def source_families(s: SourceProcess) -> Iterator:
    """The source's families; each series carries a ``source`` label (a site may have several sources)."""
    led, gate, src = s.ledger, s.gate, {"source": s.name}
    refused = sum(s.intake.refused.values()) if s.intake is not None else 0  # by the client endpoint itself
    outcomes = {"result": led.completed, "rejected": sum(gate.rejected.values()) + refused,
                "expired": led.expired + gate.expired, "failed": led.failed}
    yield _counter("mdiexit_items", outcomes, src)
    yield _counter("mdiexit_offered_items", {"": gate.offered + refused}, src)
    by_exit = {str(k): led.exit_counts.get(k, 0) for k in range(1, s.node.pkg.num_tasks + 1)}
    yield _counter("mdiexit_items_by_exit", by_exit, src)
    yield _counter("mdiexit_items_by_version", dict(led.by_package), src)
    yield _gauge("mdiexit_rollout_share_ratio", s.sc.rollout.fraction if s.sc.rollout is not None else 0.0, src)
    yield _gauge("mdiexit_admission_rate_per_second", s.admission.rate(), src)
    yield _gauge("mdiexit_admission_queue_items", len(gate.queue), src)
    yield _gauge("mdiexit_in_flight_items", len(led.in_flight), src)
    up = GaugeMetricFamily("mdiexit_node_up", _help("mdiexit_node_up"), labels=["source", "node"])
    backlog = GaugeMetricFamily("mdiexit_reported_backlog_seconds", _help("mdiexit_reported_backlog_seconds"),
                                labels=["source", "node"])
    for name, st in sorted(s.reports.items()):
        up.add_metric([s.name, name], 0.0 if name in s.down else 1.0)
        backlog.add_metric([s.name, name], st.backlog_s)
    yield up
    yield backlog
    if (j := s.joules_per_item()) is not None:
        yield _gauge("mdiexit_joules_per_item", j, src)


class Telemetry:
    """A node's metrics endpoint. ``port`` 0 picks a free one (see ``.port``)."""

    def __init__(self, node: NodeProcess, port: int, addr: str = LOOPBACK):
        self.registry = CollectorRegistry()
        self.registry.register(LoopCollector(node, node_families))
        self.latency: Histogram | None = None
        if node.cfg.role == "source":  # its role is the SourceProcess (told by its config: no shell imported)
            self.registry.register(LoopCollector(node, lambda n: source_families(n.role)))
            self.latency = Histogram("mdiexit_latency_seconds", _help("mdiexit_latency_seconds"), ["source"],
                                     buckets=LATENCY_BUCKETS, registry=self.registry)
            node.role.latency_observers.append(self.latency.labels(source=node.name).observe)
        if addr not in (LOOPBACK, "localhost", "::1"):
            log.warning("metrics of %s are served on %s:%d, beyond this machine, unauthenticated", node.name,
                        addr, port)
        self.server, self.thread = start_http_server(port, addr, registry=self.registry)
        self.port = self.server.server_port

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
