"""The simulated cluster: SimPy's virtual clock driving the runtime's own cores (runtime.core.NodeCore,
runtime.sourcecore.SourceCore) and policies. This module is the simulator's shell: where the runtime has threads,
sockets and sleeps, it has events.

- **Compute**: the core's ``step`` (runtime.core) decides, as in the runtime's loop; this shell carries out its
  actions. A Compute action keeps the node's compute executor busy for its device's time at that batch size
  (slowdown x the profiled host time, as the emulation makes it; plus decoding the items that came as codes), then
  the core takes the batch's precomputed logits (Computed) and hands the device its next batch before applying
  the exit rule and routing what goes on. An item that leaves as a learned code waits for the node's encode
  executor, one encode at a time (runtime.node).
- **Links**: one egress token bucket per node (emulation.link, as runtime.links), shared by all its sends, then
  the path's latency. DATA carries its payload (learned code or floats, as the core sized it) plus a header;
  RESULT and STATE their measured sizes. Every message carries its sender's backlog.
- **Heartbeats**: every node sends a STATE every ``heartbeat_ms`` (at a seeded phase) to its neighbours, the nodes
  that send it DATA and the source; the source to its neighbours and senders only (an O(nodes) broadcast per
  period would be the runtime's, and is the one thing not modelled). One event per node and latency per period.
- **Source**: offers at the admission policy's rate, the gate, the control step every CONTROL_PERIOD_S and the
  release on every arrival, result and 10 ms tick, as the runtime source's admitting phase (runtime.source).

- **Roll-outs** (`--rollout`): sim.rollout ships the archive over the links and loads it; the source core's roll-out
  decides as in the runtime.

Not modelled: the host's own CPU contention, message decode/validation costs, failures and joins.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import simpy

from mdiexit.config import ClusterConfig, NodeConfig, link_between
from mdiexit.emulation.device import DeviceModel
from mdiexit.emulation.link import LinkPacer
from mdiexit.emulation.overhead import MEASURED as RUNTIME_COST
from mdiexit.package import Package
from mdiexit.policies.modes import ModeRules
from mdiexit.policies.offload import ServiceEstimator
from mdiexit.protocol.stats import task_stats
from mdiexit.runtime import events  # the cores' events and actions: events.Arrived, events.Dispatch, ...
from mdiexit.runtime.arrivals import Offer
from mdiexit.runtime.core import NodeCore, codes_pay, energy_weights, held_tasks, neighbour_view
from mdiexit.runtime.device import seed_estimates
from mdiexit.runtime.events import Finished, WorkItem
from mdiexit.runtime.sourcecore import ADMIT_LOOK_S, CONTROL_PERIOD_S, SourceCore
from mdiexit.sim.model import Items, device_table
from mdiexit.sim.rollout import SimDeploy, stream_keys

# Wire sizes (bytes) of the headers of this protocol version, msgpack-encoded, as measured on typical messages.
DATA_HEADER_BYTES = 270
RESULT_BYTES = 190
STATE_BYTES = 150
CODED = {}  # marks an item whose next task input travels as a learned code (the simulator carries no arrays)


class SimNode:
    """One node's shell in virtual time."""

    def __init__(self, world: World, cfg: NodeConfig, core: NodeCore, times: dict, is_source: bool):
        self.world, self.cfg, self.core, self.times = world, cfg, core, times
        self.name, self.is_source = cfg.name, is_source
        self.egress = LinkPacer(cfg.bandwidth_mbps * 1e6 if cfg.bandwidth_mbps is not None else None, 0.0)
        self.encode_free_at = 0.0  # when the encode executor is free
        self.busy_s = 0.0
        self.calls = 0
        self.state_to: dict[float, list[SimNode]] = {}  # STATE recipients, by path latency
        self.visits = 0  # admissions here and DATA arrivals: what the runtime's own work is charged by
        self.received_data = 0
        self.owed_s = 0.0  # `cpu_slowdown`: device seconds of runtime work, paid before the next batch
        self.charged_s = 0.0

    # ---------------------------------------------------------------- links
    def send(self, nbytes: int, dst: SimNode, fn: Callable, *args) -> None:
        t = self.world.env.now
        arrival = self.egress.departure(nbytes, t) + link_between(self.cfg, dst.cfg)[1]
        self.world.at(arrival - t, fn, *args)

    def send_item(self, s: events.Send) -> None:
        it = s.item
        nbytes = DATA_HEADER_BYTES + self.core.payload_bytes(it)[s.target]
        if it.code is None and it.task - 1 in self.core.compress_on.get(s.target, ()):
            it.code = CODED
        it.hops += 1
        dst = self.world.nodes[s.target]
        self.send(nbytes, dst, dst.on_data, self.name, self.core.backlog_s(self.world.env.now), it)

    def charge(self, visits: int = 0, seconds: float = 0.0) -> None:
        """The runtime's own work, as the device would pay it under `cpu_slowdown` (emulation/overhead.py)."""
        self.visits += visits
        owed = RUNTIME_COST.charge_s(self.cfg.cpu_slowdown, visits, seconds)
        self.owed_s += owed
        self.charged_s += owed

    def on_data(self, sender: str, backlog_s: float, item: WorkItem) -> None:
        t = self.world.env.now
        self.received_data += 1
        self.charge(visits=1)
        self.core.on_report(sender, backlog_s, t, None)
        if self.is_source:
            self.sc.heard(sender, t)
        self.step(events.Arrived(item, self.egress.queued_bytes(t)))

    def route(self, item: WorkItem) -> None:
        self.step(events.Route(item, self.egress.queued_bytes(self.world.env.now)))

    def step(self, event: events.Event) -> None:
        """Feed the core one event and carry out its actions, as runtime.node's loop does."""
        for a in self.core.step(event, self.world.env.now):
            if isinstance(a, events.Send):
                self.send_encoded(a)
            elif isinstance(a, events.Compute):
                self.compute(a.batch)
            elif isinstance(a, events.Deliver):
                self.deliver(a.finished)
            elif isinstance(a, events.Expire):
                self.deliver(Finished(a.item, 0, a.item.task, 0.0), expired=True)
            elif isinstance(a, events.Report):
                self.report(a.skip)
            # HandBack (a graceful leave) is not simulated; GiveUp is counted by the core

    def heartbeat(self) -> None:
        t = self.world.env.now
        self.step(events.Tick(self.world.quiet_report_s, self.world.give_up_s, self.egress.queued_bytes(t),
                              self.world.heartbeat_s))
        self.charge(seconds=self.world.heartbeat_s)
        self.world.at(self.world.heartbeat_s, self.heartbeat)

    def report(self, skip: frozenset[str] = frozenset()) -> None:
        """A STATE to every recipient but ``skip`` (events.Report), one event per path latency."""
        t = self.world.env.now
        backlog = self.core.backlog_s(t)
        per_source = self.core.source_backlogs_s(t)
        service = self.core.estimator.snapshot()
        to = {lat: [r for r in recipients if r.name not in skip] for lat, recipients in self.state_to.items()}
        count = sum(len(r) for r in to.values())
        departure = self.egress.departure(STATE_BYTES * count, t)
        for latency, recipients in to.items():
            if recipients:
                self.world.at(departure - t + latency, self.world.deliver_state, self.name, backlog, service,
                              recipients, per_source)

    # ---------------------------------------------------------------- compute
    def compute(self, batch: list[WorkItem]) -> None:
        """The compute executor: busy for the device's time at this batch size, then the batch is computed."""
        k = batch[0].task
        seconds = self.times["task", k][len(batch)] + self.owed_s
        self.owed_s = 0.0
        for it in batch:
            if it.code is not None:  # features that crossed the network as a learned code
                seconds += self.times["decode", k - 1][1]
                it.code = None
        self.calls += 1
        self.world.at(seconds, self.computed, batch, seconds)

    def computed(self, batch: list[WorkItem], seconds: float) -> None:
        t = self.world.env.now
        self.busy_s += seconds
        logits = self.world.logits(batch[0].task, batch)
        self.step(events.Computed(batch, None, logits, seconds, self.egress.queued_bytes(t)))

    def send_encoded(self, s: events.Send) -> None:
        """Send, after the encode executor's time where the item leaves as a learned code (one encode at a time)."""
        it = s.item
        if it.code is not None or it.task - 1 not in self.core.compress_on.get(s.target, ()):
            self.send_item(s)
            return
        t = self.world.env.now
        encode_s = self.times["encode", it.task - 1][1]
        self.encode_free_at = max(t, self.encode_free_at) + encode_s
        self.busy_s += encode_s
        self.world.at(self.encode_free_at - t, self.send_item, s)

    def deliver(self, f: Finished, expired: bool = False) -> None:
        src = self.world.nodes[f.item.source]  # the source that admitted it
        if self is src:
            src.result(self.name, f, expired)
        else:
            self.send(RESULT_BYTES, src, src.on_result, self.name, self.core.backlog_s(self.world.env.now), f, expired)

    def stats(self, elapsed_s: float) -> dict[str, float]:
        per_batch = {k: self.times["task", k] for k in self.core.held}
        out = task_stats(self.core.tasks_run, {k: t[1] for k, t in per_batch.items()},
                         {k: min(t[b] / b for b in range(1, len(t))) for k, t in per_batch.items()})
        out.update(busy_s=self.busy_s, elapsed_s=elapsed_s, bad_messages=0.0, bytes_sent=float(self.egress.bytes_sent),
                   dropped_parked=float(self.core.dropped_parked), emulated_calls=float(self.calls), overruns=0.0)
        out.update(runtime_cpu_s=RUNTIME_COST.per_visit_s * self.visits + RUNTIME_COST.per_second_s * elapsed_s,
                   runtime_charged_s=self.charged_s, received_data=float(self.received_data))
        return out


class SimSource(SimNode):
    """The source's shell: arrivals, the admit loop's releases and control steps, results into the ledger."""

    def __init__(self, world: World, cfg: NodeConfig, core: NodeCore, times: dict, sc: SourceCore, items: Items,
                 deadline_s: float | None):
        super().__init__(world, cfg, core, times, is_source=True)
        self.sc = sc
        self.items, self.deadline_s = items, deadline_s  # its stream
        self.admitting = False
        self.arrived = 0
        self.start = 0.0
        self.deploy: SimDeploy | None = None  # a roll-out's shell (sim.rollout), when one is played

    def result(self, node: str, f: Finished, expired: bool, backlog_s: float | None = None) -> None:
        it = f.item
        self.source_step(events.ResultIn(it.item_id, f.label, f.exit, f.confidence, node, it.attempt, expired,
                                         backlog_s))
        self.release()

    def on_result(self, sender: str, backlog_s: float, f: Finished, expired: bool) -> None:
        t = self.world.env.now
        self.core.on_report(sender, backlog_s, t, None)
        self.sc.heard(sender, t)
        self.result(sender, f, expired, backlog_s)

    def arrive(self) -> None:
        if not self.admitting:
            return
        k = self.arrived % len(self.items)
        self.arrived += 1
        offer = Offer(None, int(self.items.labels[k]), k, self.deadline_s)
        if not self.source_step(events.Offered(offer)):  # queued at the gate (not refused)
            self.release()
        self.world.at(1.0 / max(self.sc.admission.rate(), 1e-3), self.arrive)

    def release(self) -> None:
        t = self.world.env.now
        actions = self.sc.step(events.Release(self.core.backlog_of(self.name, t)), t)
        self.charge(visits=sum(isinstance(a, events.Dispatch) for a in actions))  # admissions cost first
        self.carry_out(actions)

    def tick(self) -> None:
        self.release()
        self.sc.ledger.take_settled()  # nobody waits on an answer: keep the ledger's queue of them short
        self.world.at(ADMIT_LOOK_S, self.tick)

    def control(self) -> None:
        t = self.world.env.now
        backlog_s = self.core.backlog_of(self.name, t)
        step = events.ControlStep(self.start, backlog_s) if self.admitting else events.Supervise(backlog_s)
        self.source_step(step)
        self.world.at(CONTROL_PERIOD_S, self.control)

    def batch_logits(self, task: int, item_ids: list[int], package: str = "") -> np.ndarray:
        if self.deploy is not None:  # a roll-out: shadow copies, and the new version's own logits
            keys = stream_keys(self, item_ids)
            if package == self.deploy.pkg.version:
                return self.deploy.logits(task, keys)
            return self.items.logits[task - 1][keys]
        records = self.sc.ledger.records  # a record's key is its item's place in the stream
        return self.items.logits[task - 1][[records[i].key for i in item_ids]]

    def source_step(self, event: events.SourceEvent) -> list[events.SourceAction]:
        """Hand ``event`` to the source core and carry out what it decided, as the runtime's source shell does
        (runtime.source.SourceProcess.source_step)."""
        return self.carry_out(self.sc.step(event, self.world.env.now))

    def carry_out(self, actions: list[events.SourceAction]) -> list[events.SourceAction]:
        """Nobody waits on an answer here: a refusal, or an offer that expired at the gate, is the gate's count."""
        for action in actions:
            match action:
                case events.Dispatch(item):
                    self.route(item)
                case events.TakeOut(name):
                    self.core.on_leave(name)
                case events.Retire(package) if self.deploy is not None:
                    self.deploy.retire(package)
        return actions


@dataclass
class SimFeed:
    """One source's part of a simulated run: its core, its stream and its items' deadline."""

    sc: SourceCore
    items: Items
    deadline_s: float | None = None


class World:
    """Every node of ``cluster`` in one SimPy environment."""

    def __init__(self, cluster: ClusterConfig, pkg: Package, rules: ModeRules, feeds: dict[str, SimFeed],
                 profiles: dict[int, dict], seed: int = 0):
        self.env = simpy.Environment()
        self.cluster, self.pkg, self.rules = cluster, pkg, rules
        self.max_batch = cluster.max_batch
        self.heartbeat_s = cluster.heartbeat_ms / 1000
        self.quiet_report_s = cluster.quiet_report_s
        self.give_up_s = 5 * cluster.dead_after_ms / 1000  # as runtime.node's heartbeat loop
        self.events = 0
        self.rolling = False  # a roll-out is played (sim.rollout): STATEs say which versions each node holds
        by_name = {n.name: n for n in cluster.nodes}
        nodes = [n for n in cluster.nodes if not rules.single_node or n.name in feeds]
        tables: dict[tuple[float, int], dict] = {}
        self.nodes: dict[str, SimNode] = {}
        self.sources: dict[str, SimSource] = {}
        cfg = cluster.offload_config()
        for n in nodes:
            key = (n.slowdown, n.threads)
            if key not in tables:
                tables[key] = device_table(n.slowdown, profiles[n.threads], self.max_batch)
            held = held_tasks(n, rules, pkg.num_tasks)
            nbs = [] if rules.single_node else [m for m in cluster.neighbours_of(n.name) if m != n.name]
            views = {m: neighbour_view(n, by_name[m], rules, pkg.num_tasks) for m in nbs}
            estimator = ServiceEstimator.from_package(pkg, n.rated_macs_per_s)
            seed_estimates(estimator, DeviceModel(n.slowdown, profiled_s=profiles[n.threads]), held)
            core = NodeCore(n.name, pkg, held, rules, cfg, estimator, views, is_source=n.name in feeds,
                            compress_on=self._compress_on(n, held, nbs, by_name, tables[key], profiles),
                            energy=energy_weights(cluster, n), max_batch=self.max_batch, weights=cluster.weights)
            if n.name in feeds:
                feed = feeds[n.name]
                self.sources[n.name] = self.nodes[n.name] = SimSource(self, n, core, tables[key], feed.sc, feed.items,
                                                                      feed.deadline_s)
            else:
                self.nodes[n.name] = SimNode(self, n, core, tables[key], False)
        senders: dict[str, set[str]] = defaultdict(set)
        for a, nbs in cluster.neighbours.items():
            for b in nbs:
                senders[b].add(a)
        for name, node in self.nodes.items():
            to = set(cluster.neighbours_of(name)) | senders[name] | set(self.sources)
            to.discard(name)
            for m in sorted(to):
                if m in self.nodes:
                    node.state_to.setdefault(link_between(node.cfg, by_name[m])[1], []).append(self.nodes[m])
        rng = np.random.default_rng(seed)
        for node in self.nodes.values():  # the runtime's heartbeat threads start at no common instant
            self.at(float(rng.uniform(0.0, self.heartbeat_s)), node.heartbeat)

    def _compress_on(self, n: NodeConfig, held: frozenset[int], peers: list[str], by_name: dict[str, NodeConfig],
                     table: dict, profiles: dict[int, dict]) -> dict[str, set[int]]:
        """runtime.device.compression_plan, from the device tables instead of measurements."""
        plan: dict[str, set[int]] = {m: set() for m in peers}
        if n.compress == "off":
            return plan
        for spec in self.pkg.compression:
            j = spec.after_task
            if j not in held:
                continue
            for m in peers:
                peer = by_name[m]
                dec = peer.slowdown * (DeviceModel(1.0, profiled_s=profiles.get(peer.threads, {})).host_s(
                    ("decode", j), 1) or 0.0)
                if n.compress == "on" or codes_pay(self.pkg.task(j).feature_bytes, spec.code_bytes,
                                                   link_between(n, peer)[0], table["encode", j][1], dec):
                    plan[m].add(j)
        return plan

    def at(self, delay: float, fn: Callable, *args) -> None:
        """Call ``fn(*args)`` ``delay`` seconds of virtual time from now."""
        self.events += 1
        ev = self.env.timeout(max(0.0, delay))
        ev.callbacks.append(lambda _e: fn(*args))

    def logits(self, task: int, batch: list[WorkItem]) -> np.ndarray:
        """Each item's precomputed logits at ``task``'s exit, from its own source's stream."""
        first, package = batch[0].source, batch[0].package  # (a batch is of one package version)
        if all(it.source == first for it in batch):
            return self.sources[first].batch_logits(task, [it.item_id for it in batch], package)
        return np.concatenate([self.sources[it.source].batch_logits(task, [it.item_id], package) for it in batch])

    def deliver_state(self, sender: str, backlog_s: float, service: dict[int, float], recipients: list[SimNode],
                      per_source: dict[str, float] | None = None) -> None:
        t = self.env.now
        held = self.nodes[sender].core.pkgs
        packages = tuple(held) if len(held) > 1 or self.rolling else ()  # what a STATE's progress says
        for r in recipients:
            r.core.on_report(sender, backlog_s, t, service, per_source)
            if packages:
                r.core.on_packages(sender, list(packages))
            if isinstance(r, SimSource):
                r.source_step(events.StateIn(sender, per_source.get(r.name, backlog_s) if per_source else backlog_s,
                                             packages=packages))
