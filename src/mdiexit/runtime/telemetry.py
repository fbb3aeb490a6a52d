"""Prometheus metrics of a node (DESIGN §10), over HTTP on ``metrics_port`` (cluster file) or --metrics-port.

Every value is read from the node at scrape time (a collector), so the hot paths pay nothing, and the counts
are the very counters the run summary reports. The one exception is the latency histogram, observed by the
source as each item settles. The endpoint binds to loopback unless told otherwise: metrics carry no secrets,
but nothing reachable from the network should be open by default (scrape through a local agent, or pass
--metrics-addr with care).

    mdiexit_items_total{outcome}            every offered item's outcome (source): result, rejected, expired, failed
    mdiexit_items_by_exit_total{exit}       results by the exit they left the model at (source)
    mdiexit_latency_seconds                 admission to result (source), a histogram
    mdiexit_admission_rate_per_second       the admission policy's λ (source)
    mdiexit_admission_queue_items           requests waiting at the gate (source)
    mdiexit_in_flight_items                 admitted, not yet settled (source)
    mdiexit_node_up{node}                   1 while the source hears the node (source)
    mdiexit_backlog_seconds{node}           estimated queued compute (each node its own; the source all)
    mdiexit_queue_items, mdiexit_tasks_total{task}, mdiexit_busy_seconds_total, mdiexit_utilization_ratio,
    mdiexit_sent_bytes_total, mdiexit_bad_messages_total, mdiexit_rejected_messages_total{reason}
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from mdiexit.protocol.messages import REJECT_REASONS
from mdiexit.runtime.links import now

if TYPE_CHECKING:
    from mdiexit.runtime.node import NodeProcess
    from mdiexit.runtime.source import SourceProcess

log = logging.getLogger("mdiexit.metrics")
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LOOPBACK = "127.0.0.1"


def _gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    g.add_metric(list((labels or {}).values()), value)
    return g


def _counter(name: str, doc: str, by: str | None, values: dict[str, float]) -> CounterMetricFamily:
    c = CounterMetricFamily(name, doc, labels=[by] if by else [])
    for label, v in values.items():
        c.add_metric([label] if by else [], v)
    return c


class NodeCollector(Collector):
    def __init__(self, node: NodeProcess):
        self.node = node

    def collect(self):
        n = self.node
        t = now()
        yield _gauge("mdiexit_backlog_seconds", "estimated seconds of queued compute", n.core.backlog_s(t),
                     {"node": n.name})
        yield _gauge("mdiexit_queue_items", "items queued at this node", len(n.core.queue))
        yield _counter("mdiexit_tasks", "tasks run, by task", "task",
                       {str(k): v for k, v in sorted(n.core.tasks_run.items())})
        yield _counter("mdiexit_busy_seconds", "emulated device time spent computing", None, {"": n.busy_s})
        yield _gauge("mdiexit_utilization_ratio", "busy time over time running",
                     n.busy_s / max(t - n.started_at, 1e-9))
        yield _counter("mdiexit_sent_bytes", "bytes sent on every link", None, {"": n.egress.bytes_sent})
        yield _counter("mdiexit_bad_messages", "malformed messages dropped", None, {"": n.bad_messages})
        yield _counter("mdiexit_rejected_messages", "well-formed messages refused, by reason", "reason",
                       {r: n.rejected[r] for r in REJECT_REASONS})


class SourceCollector(Collector):
    def __init__(self, source: SourceProcess):
        self.source = source

    def collect(self):
        s = self.source
        led, gate = s.ledger, s.gate
        refused = sum(s.intake.refused.values()) if s.intake is not None else 0  # by the client endpoint itself
        outcomes = {"result": led.completed, "rejected": sum(gate.rejected.values()) + refused,
                    "expired": led.expired + gate.expired, "failed": led.failed}
        yield _counter("mdiexit_items", "offered items by outcome", "outcome", outcomes)
        yield _counter("mdiexit_offered_items", "items offered to the service", None, {"": gate.offered + refused})
        yield _counter("mdiexit_items_by_exit", "results by exit", "exit",
                       {str(k): led.exit_counts.get(k, 0) for k in range(1, s.pkg.num_tasks + 1)})
        yield _gauge("mdiexit_admission_rate_per_second", "the admission policy's rate", s.admission.rate())
        yield _gauge("mdiexit_admission_queue_items", "requests waiting at the admission gate", len(gate.queue))
        yield _gauge("mdiexit_in_flight_items", "admitted items not yet settled", len(led.in_flight))
        up = GaugeMetricFamily("mdiexit_node_up", "1 while the source hears the node", labels=["node"])
        backlog = GaugeMetricFamily("mdiexit_reported_backlog_seconds", "each node's last reported backlog",
                                    labels=["node"])
        for name, st in sorted(s.reports.items()):
            up.add_metric([name], 0.0 if name in s.down else 1.0)
            backlog.add_metric([name], st.backlog_s)
        yield up
        yield backlog


class Telemetry:
    """A node's metrics endpoint. ``port`` 0 picks a free one (see ``.port``)."""

    def __init__(self, node: NodeProcess, port: int, addr: str = LOOPBACK):
        self.registry = CollectorRegistry()
        self.registry.register(NodeCollector(node))
        self.latency: Histogram | None = None
        from mdiexit.runtime.source import SourceProcess

        if isinstance(node, SourceProcess):
            self.registry.register(SourceCollector(node))
            self.latency = Histogram("mdiexit_latency_seconds", "admission to result", buckets=LATENCY_BUCKETS,
                                     registry=self.registry)
            node.latency_observers.append(self.latency.observe)
        if addr not in (LOOPBACK, "localhost", "::1"):
            log.warning("metrics of %s are served on %s:%d, beyond this machine, unauthenticated", node.name,
                        addr, port)
        self.server, self.thread = start_http_server(port, addr, registry=self.registry)
        self.port = self.server.server_port

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
