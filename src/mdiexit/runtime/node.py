"""The process shell of one node: ZeroMQ sockets and threads around a NodeCore. The core decides where work
runs; the shell moves bytes, checks who sent them, emulates the device and hands work back when leaving.

Threads, and who owns what:
- the loop (runtime.loop) owns the core, the link meter and every decision. It reads the one PULL socket (a
  CurveZMQ server unless insecure), decodes and validates every message and checks that its ``sender`` is the node
  whose key authenticated the connection (bad ones are counted, logged, dropped); it routes items, hands the
  device its next batch, finishes computed ones, and every `heartbeat_ms` sends a STATE to every node it sends to
  or hears DATA from, and to the source (each acknowledges the bytes received from its addressee, whose link
  estimates, runtime.linkmeter, come from these);
- compute, and encode where features cross a link as learned codes (runtime.executors): they make the emulated
  device's calls the loop hands them, and post the outputs back to it.
The loop also sends: each outgoing link (runtime.links) paces its bytes at the egress's bandwidth and adds its
latency with the loop's timers (DESIGN §7). Communication overlaps compute: the compute thread never sends.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import zmq

from mdiexit.clock import REAL_TIME, WallClock
from mdiexit.config import ClusterConfig, NodeConfig
from mdiexit.emulation.device import DeviceModel
from mdiexit.energy import power_model
from mdiexit.meters import EnergyCounter, find_meter
from mdiexit.package import Package
from mdiexit.policies.modes import rules_for
from mdiexit.policies.offload import NeighbourView, ServiceEstimator
from mdiexit.protocol.codec import Limits, ProtocolError, check_arrays, decode, encode
from mdiexit.protocol.messages import (
    CLUSTER_KINDS,
    Control,
    Data,
    Join,
    Member,
    Part,
    Result,
    Rollout,
    Ship,
    State,
)
from mdiexit.runtime import events  # the node core's events and actions: events.Arrived, events.Compute, ...
from mdiexit.runtime.bulk import BulkSender
from mdiexit.runtime.core import NodeCore, energy_weights, held_tasks, neighbour_view, peers_of
from mdiexit.runtime.device import Profile, calibrate, compression_plan, make_engine, seed_estimates
from mdiexit.runtime.executors import Executors
from mdiexit.runtime.linkmeter import LinkMeter
from mdiexit.runtime.links import Egress, Link
from mdiexit.runtime.loop import Loop
from mdiexit.runtime.nodestats import final_stats, progress_report
from mdiexit.runtime.options import ClusterError
from mdiexit.runtime.reporting import due_after, heartbeat_after
from mdiexit.runtime.role import Role, WorkerRole
from mdiexit.runtime.versions import HeldVersions, Version
from mdiexit.security import CLIENTS, OPERATORS, Identity, NodeAuthenticator, is_operator, make_server
from mdiexit.util import SignalFlag

log = logging.getLogger("mdiexit.node")
KIND_OF = {kind: kind.__name__.lower() for kind in CLUSTER_KINDS}  # the name a message is counted under
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)  # plain ints: pyzmq's enum flags cost a µs per test
MAX_READS = 64  # messages read in one round of the loop before it looks at its timers and the device again
PROGRESS_PERIOD_S = 1.0  # how often a heartbeat carries the node's progress and package, for the site's status


def member_config(m: Member) -> NodeConfig:
    return NodeConfig(name=m.name, port=m.port, host=m.host, tasks=tuple(m.tasks) if m.tasks else None,
                      threads=m.threads, slowdown=m.slowdown, bandwidth_mbps=m.bandwidth_mbps, latency_ms=m.latency_ms,
                      public_key=m.public_key)


_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


class NodeProcess:
    """A node running in this OS process: its sockets, loop, executors and core. Its role says what it does with
    what only the source handles: a worker's (WorkerRole), or the source's (runtime.source.SourceProcess)."""

    def __init__(self, cluster: ClusterConfig, name: str, pkg: Package, mode: str | None = None,
                 pace_bandwidth: bool = True, identity: Identity | None = None, allowed_dir: Path | None = None,
                 metrics_port: int | None = None, metrics_addr: str | None = None,
                 host_profile: Profile | None = None, clock: WallClock = REAL_TIME, role: Role | None = None):
        self.cluster, self.pkg = cluster, pkg
        # what this node does with what only the source handles: a worker's, unless it is the source
        self.role: Role = role if role is not None else WorkerRole(self)
        self.clock = clock  # every time this node reads or waits for (mdiexit.clock): dilated with a factor
        self.package_version = pkg.version
        self.identity = identity  # None: insecure (no CurveZMQ), asked for with --insecure
        self.allowed_dir = allowed_dir  # the source: keys an operator allowed to join (`mdiexit keys allow`)
        self.pace_bandwidth = pace_bandwidth  # False: the kernel shapes the links (`--net namespaces`)
        self.cfg = cluster.node(name)
        self.name = name
        self.mode = mode or cluster.mode
        self.rules = rules_for(self.mode)
        self.is_source = self.cfg.role == "source"
        self.held = held_tasks(self.cfg, self.rules, pkg.num_tasks)
        self.source_name = cluster.source.name
        self.engine = make_engine(pkg, self.cfg, cluster, self.held)
        # the package versions held (runtime.versions): the first, and during a roll-out the one shipped here
        self.versions = HeldVersions(self, Version(pkg, self.engine))
        self.device: DeviceModel = calibrate(self.engine, pkg, self.held, self.cfg, cluster, host_profile)
        self.device.cpu_slowdown = self.cfg.cpu_slowdown
        self.device.clock = clock
        self.device.start_runtime_clock()
        self.received: Counter[str] = Counter()  # messages by kind (data, state, result, ...)
        self.limits = Limits()
        self.stop = threading.Event()
        self.leave_requested = SignalFlag()  # SIGTERM: a graceful leave (set in the signal handler)
        self.bad_messages = 0
        self.rejected: Counter[str] = Counter()  # messages refused, by REJECT_REASONS
        self.busy_s = 0.0
        self.progress_sent_at = float("-inf")
        self.energy = EnergyCounter(find_meter(), PROGRESS_PERIOD_S)  # a Jetson's INA3221 rails, where readable
        self.power = power_model(self.cfg.power)  # where there is no meter (None: not counted)
        self.started_at = self.clock.now()
        self.ctx = zmq.Context()
        estimator = ServiceEstimator.from_package(pkg, self.cfg.rated_macs_per_s)
        seed_estimates(estimator, self.device, self.held)
        self.core = NodeCore(name, pkg, self.held, self.rules, cluster.offload_config(), estimator,
                             self._neighbour_views(), is_source=self.is_source,
                             energy=energy_weights(cluster, self.cfg), max_batch=cluster.max_batch,
                             weights=cluster.weights)
        self.loop = Loop(clock)  # the one thread that calls into the core
        # the threads that make the device's calls (runtime.executors)
        self.executors = Executors(self.device, self.versions, self.loop.post, self._computed, self._send_encoded)
        bandwidth = self.cfg.bandwidth_mbps * 1e6 if self.cfg.bandwidth_mbps is not None else None
        schedule = tuple((t_s, mbps * 1e6) for t_s, mbps in self.cfg.bandwidth_schedule or ())
        self.egress = Egress(bandwidth, schedule, pace_bandwidth)
        # packages to joiners and to nodes during a roll-out: in parts, paced behind the data (runtime.bulk)
        self.bulk = BulkSender(self.egress, lambda peer, frames: self.links[peer].send(frames, self.clock.now()))
        self.meter = LinkMeter(measured=cluster.links == "measured")
        self.run_origin: float | None = None  # when the run started, on this node's clock (link schedules)
        self.links: dict[str, Link] = {}
        self.inbox: zmq.Socket | None = None
        self.monitor: zmq.Socket | None = None
        self.auth: NodeAuthenticator | None = None
        self.threads: list[threading.Thread] = []
        self.metrics_port = metrics_port if metrics_port is not None else self.cfg.metrics_port
        self.metrics_addr = metrics_addr
        self.telemetry = None  # the Prometheus endpoint, when a metrics port is set

    # ---------------------------------------------------------------- setup
    def _peers(self) -> list[str]:
        return peers_of(self.cluster, self.name, self.rules)

    def _neighbour_views(self) -> dict[str, NeighbourView]:
        # only neighbours: the other peers are result- or state-only paths, not places to offload to
        return {peer: self._view_of(peer) for peer in self._peers() if peer in self.cluster.neighbours_of(self.name)}

    def _view_of(self, peer: str) -> NeighbourView:
        return neighbour_view(self.cfg, self.cluster.node(peer), self.rules, self.pkg.num_tasks)

    def start(self) -> None:
        self.inbox = self.ctx.socket(zmq.PULL)
        self.inbox.setsockopt(zmq.LINGER, 0)
        self.inbox.setsockopt(zmq.RCVHWM, 0)
        if self.identity is not None:
            keys = self.allowed_dir.parent if self.allowed_dir is not None else None
            self.auth = NodeAuthenticator(self.ctx, self.identity.peers, self.allowed_dir,
                                          keys / CLIENTS if keys else None, keys / OPERATORS if keys else None)
            self.auth.begin()
            make_server(self.inbox, self.identity)
            self.monitor = self.inbox.get_monitor_socket(_HANDSHAKE_FAILED)
        try:
            self.inbox.bind(f"tcp://*:{self.cfg.port}" if self.cfg.host not in ("127.0.0.1", "localhost")
                            else self.cfg.address)
        except zmq.ZMQError as e:
            raise ClusterError(f"node {self.name}: cannot listen on {self.cfg.address} ({e})") from None
        for peer in self._peers():
            self.links[peer] = self._link(self.cluster.node(peer))
        self.core.compress_on = compression_plan(self.engine, self.pkg, self.held, self.cluster, self.name,
                                                 list(self.links), self.device)
        if self.metrics_port is not None:
            from mdiexit.runtime.telemetry import LOOPBACK, Telemetry

            self.telemetry = Telemetry(self, self.metrics_port, self.metrics_addr or LOOPBACK)
        self.loop.on_readable(self.inbox, self._read_inbox)
        self.loop.after.append(self.bulk.pump)
        if self.monitor is not None:
            self.loop.on_readable(self.monitor, self._read_monitor)
        self.loop.at(self._heartbeat_after(self.clock.now()), self._heartbeat)
        executors = [(self.executors.compute_loop, "compute")]
        if any(self.core.compress_on.values()):
            executors.append((self.executors.encode_loop, "encode"))
        for target, tname in ((partial(self.loop.run, self.stop), "loop"), *executors):
            t = threading.Thread(target=target, name=f"{self.name}-{tname}", daemon=True)
            t.start()
            self.threads.append(t)

    def _link(self, node: NodeConfig) -> Link:
        bw, lat = self.cluster.link(self.name, node.name)
        self.meter.add_peer(node.name, bw, lat)  # the configured figures seed its estimates
        return Link(self.ctx, node.name, node.address, self.egress, lat, self.loop, self.identity, self.meter.on_send)

    def start_run(self, origin: float) -> None:
        """The run started at ``origin`` (this node's clock): emulated link schedules count from it."""
        self.run_origin = origin
        self.egress.start_schedule(origin)

    @property
    def leaving(self) -> bool:
        return self.core.leaving

    def execute(self, actions: list[events.Action], t: float) -> None:
        """Carry out what the core decided, in its order."""
        for a in actions:
            if isinstance(a, events.Send):
                self.send_item(a, t)
            elif isinstance(a, events.Compute):
                self.executors.compute(a.batch, a.continued)
            elif isinstance(a, events.Deliver):
                if a.finished.item.source == self.name:
                    self.role.deliver(a.finished)
                else:
                    self.send_result(a.finished)
            elif isinstance(a, events.Expire):
                if a.item.source == self.name:
                    self.role.deliver_expired(a.item)
                else:
                    self.send_expired(a.item)
            elif isinstance(a, events.Report):
                self.send_state(skip=a.skip)
            elif isinstance(a, events.HandBack):
                self.hand_back(a.item, t)
            elif isinstance(a, events.GiveUp):  # nobody reachable holds its task: the source's ledger re-dispatches it
                log.warning("%s: item %d waited %.1f s for a holder of task %d; dropped",
                            self.name, a.item.item_id, t - a.item.parked_at, a.item.task)

    def send_result(self, f: events.Finished) -> None:
        """A RESULT to the source that admitted the item."""
        it, t = f.item, self.clock.now()
        msg = Result(item_id=it.item_id, attempt=it.attempt, label=f.label, exit=f.exit,
                     confidence=min(1.0, f.confidence), sender=self.name, backlog_s=self.core.backlog_s(t),
                     admitted_at=it.admitted_at, timings=it.timings)
        self.links[it.source or self.source_name].send(encode(msg), t)

    def send_expired(self, item: events.WorkItem) -> None:
        """Tell the item's source it was dropped unrun: its deadline passed here."""
        t = self.clock.now()
        msg = Result(item_id=item.item_id, attempt=item.attempt, label=0, exit=item.task, confidence=0.0,
                     sender=self.name, backlog_s=self.core.backlog_s(t), admitted_at=item.admitted_at, expired=True)
        self.links[item.source or self.source_name].send(encode(msg), t)

    # ---------------------------------------------------------------- stop
    def close(self) -> None:
        self.stop.set()
        self.loop.wake()
        self.executors.close()
        for t in self.threads:
            t.join(timeout=2)
        self.loop.close()
        if self.telemetry is not None:
            self.telemetry.close()
        self.versions.remove()
        for link in self.links.values():
            link.close()
        if self.monitor is not None:
            self.inbox.disable_monitor()
            self.monitor.close()
        if self.inbox is not None:
            self.inbox.close()
        if self.auth is not None:
            self.auth.stop()
        # a socket that could not flush (its peer is gone) is dropped, unflushed: term() would wait for it for ever,
        # and a worker would outlive its run; the closed ones flush within their linger
        self.ctx.destroy(linger=0)

    # ---------------------------------------------------------------- receive
    def _read_monitor(self, monitor: zmq.Socket) -> None:
        monitor.recv_multipart()  # a peer without a cluster key tried to connect
        self.reject("unauthenticated", "a connection without a cluster key was refused")

    def _read_inbox(self, inbox: zmq.Socket) -> None:
        for _ in range(MAX_READS):
            if not inbox.get(_EVENTS) & _POLLIN:  # drained (cheaper to ask than to catch zmq.Again)
                return
            frames = inbox.recv_multipart(zmq.NOBLOCK, copy=False)
            try:
                msg, arrays = decode(frames, self.limits)
                if not isinstance(msg, CLUSTER_KINDS):
                    raise ProtocolError(f"{type(msg).__name__.upper()} belongs on the client endpoint")
                check_arrays(msg, arrays, self._package_of(msg))
            except ProtocolError as e:
                self.bad_messages += 1
                log.warning("%s: dropped a bad message (%s)", self.name, e)
                continue
            if self.authentic(msg, frames[0]):
                self.meter.on_receive(msg.sender, sum(len(f) for f in frames), self.clock.now())
                self.handle(msg, arrays)

    def _package_of(self, msg) -> Package:
        """The package a message is checked against: its item's version where held here, else the first."""
        version = self.versions.loaded.get(msg.package) if isinstance(msg, Data) and msg.package else None
        return version.pkg if version is not None else self.pkg

    def reject(self, reason: str, why: str) -> None:
        self.rejected[reason] += 1
        log.warning("%s: refused a message (%s): %s", self.name, reason, why)

    def authentic(self, msg, frame: zmq.Frame) -> bool:
        """The sender is who its key says, and CONTROL comes from the source (DESIGN §6, Security)."""
        if self.identity is not None:
            user = frame.get("User-Id")
            if msg.sender != user:
                self.reject("impersonation", f"{type(msg).__name__} claims sender {msg.sender!r}, key of {user!r}")
                return False
        if type(msg) in (Control, Member) and msg.sender != self.source_name:  # a JOIN is a Member's subclass
            self.reject("impersonation", f"{type(msg).__name__.upper()} from {msg.sender!r}, not the source")
            return False
        if is_operator(msg.sender) and not isinstance(msg, Rollout | Part):
            self.reject("impersonation", f"{type(msg).__name__.upper()} from operator {msg.sender!r}")
            return False
        return True

    def handle(self, msg, arrays: list[np.ndarray]) -> None:
        t = self.clock.now()
        self.received[KIND_OF[type(msg)]] += 1
        if not isinstance(msg, Join):  # a joiner is alive once it reports as a worker
            self.role.heard(msg.sender, t)
        if isinstance(msg, Data):
            self.core.on_report(msg.sender, msg.backlog_s, t, None)
            item = events.WorkItem.from_data(msg, arrays, t)
            self.execute(self.core.step(events.Arrived(item, self.egress.queued_bytes(t)), t), t)
        elif isinstance(msg, State):
            if msg.leaving:
                self.core.on_leave(msg.sender)
            else:
                self.core.on_report(msg.sender, msg.backlog_s, t, dict(msg.service_s), msg.source_backlogs or None)
            if msg.packages:
                self.core.on_packages(msg.sender, msg.packages)
            self.meter.on_state(msg, t)
            if msg.run_s is not None and self.run_origin is None and msg.sender == self.source_name:
                self.start_run(t - msg.run_s)
            self.role.on_state(msg)
        elif isinstance(msg, Result):
            self.core.on_report(msg.sender, msg.backlog_s, t, None)
            self.role.on_result(msg)
        elif isinstance(msg, Control):
            self.on_control(msg)
        elif isinstance(msg, Ship):
            self.versions.on_ship(msg)
        elif isinstance(msg, Part):
            self.versions.on_part(msg, bytes(arrays[0]))
        elif isinstance(msg, Rollout):
            self.role.on_rollout(msg)
        elif isinstance(msg, Join):
            self.role.on_join(msg)
        elif type(msg) is Member and msg.name != self.name:
            self.add_member(member_config(msg))

    def add_member(self, node: NodeConfig) -> None:
        """A device joined: it becomes a neighbour both ways, with a link, a view and (secure) its key allowed."""
        if node.name in self.links:
            return
        self.cluster = self.cluster.with_member(node)
        if self.identity is not None:
            self.identity.peers[node.name] = node.public_key.encode()
            self.auth.allow(node.name, node.public_key.encode())
        link = self._link(node)
        self.links[node.name] = link
        self.core.compress_on = {**self.core.compress_on, node.name: set()}
        self.core.neighbours = {**self.core.neighbours, node.name: self._view_of(node.name)}
        log.warning("%s: %s joined the cluster", self.name, node.name)

    def on_control(self, msg: Control) -> None:
        if msg.action == "shutdown":
            self.send_state(final=True)
            self.stop.set()
        elif msg.action == "unload" and msg.package is not None:
            self.versions.unload(msg.package)

    # ---------------------------------------------------------------- compute
    def _computed(self, batch: list[events.WorkItem], features, logits, seconds: float) -> None:
        """The compute executor finished ``batch`` (on the loop)."""
        t = self.clock.now()
        self.busy_s += seconds
        computed = events.Computed(batch, features, logits, seconds, self.egress.queued_bytes(t))
        self.execute(self.core.step(computed, t), t)

    def _send_encoded(self, s: events.Send, arrays: dict[str, np.ndarray], seconds: float) -> None:
        """The encode executor has the item's code (on the loop)."""
        self.busy_s += seconds
        self._send_arrays(s, arrays, self.clock.now())

    def route(self, item: events.WorkItem, t: float) -> None:
        """Route an item afresh (the source: admitted, or dispatched again)."""
        self.execute(self.core.step(events.Route(item, self.egress.queued_bytes(t)), t), t)

    def send_item(self, s: events.Send, t: float) -> None:
        it = s.item
        if it.x is None:
            self._send_arrays(s, it.code, t)  # forwarded as it came
        elif it.task - 1 in self.core.compress_on.get(s.target, ()) and self.versions.has_codec(it):
            self.executors.encode(s)  # sent once the encode executor has its code
        else:
            self._send_arrays(s, {"x": it.x}, t)

    def _send_arrays(self, s: events.Send, arrays: dict[str, np.ndarray], t: float) -> None:
        it = s.item
        arrays = {n: np.ascontiguousarray(a) for n, a in arrays.items()}
        msg = it.to_data(self.name, self.core.backlog_s(t), arrays, self.cfg.wire_codec, t)
        self.links[s.target].send(encode(msg, list(arrays.values())), t)

    # ---------------------------------------------------------------- heartbeat
    def send_state(self, final: bool = False, skip: frozenset[str] = frozenset()) -> None:
        """A STATE to every peer but ``skip`` (events.Report); once a second, with the progress, to every one."""
        t = self.clock.now()
        links = self.links
        progress = final or self.progress_due(t)
        if progress:
            self.progress_sent_at = t
        peers = [p for p in links if p not in skip] if skip and not progress else list(links)
        msg = State(sender=self.name, backlog_s=self.core.backlog_s(t), queue_len=len(self.core.queue),
                    service_s=self.core.estimator.snapshot(), sent_at=t + self.egress.wait_s(t), leaving=self.leaving,
                    stats=final_stats(self) if final else {}, run_s=self.role.run_elapsed_s(t),
                    links=self.meter.figures(t) if final else {},
                    progress=progress_report(self, t) if progress else {},
                    package=self.package_version if progress else None,
                    source_backlogs=self.core.source_backlogs_s(t) or {},
                    packages=list(self.versions.loaded) if progress else [],
                    package_error=self.versions.error if progress else None)
        for peer, frames in self.meter.state_frames(msg, peers).items():
            links[peer].send(frames, t)

    def progress_due(self, t: float) -> bool:
        """Whether a STATE now carries the progress: at the heartbeat nearest a second after the last one."""
        return t - self.progress_sent_at >= due_after(PROGRESS_PERIOD_S, self.cluster.heartbeat_ms / 1000)

    def refresh_links(self, t: float) -> None:
        """Measured links: the offloading rule (and the model of a kernel-shaped egress) use the latest estimates."""
        self.egress.model_rate(self.meter.apply(self.core.neighbours, t), t)

    def read_meter(self, t: float) -> None:
        try:
            self.energy.read(t)
        except (OSError, ValueError) as e:
            log.warning("%s: power meter unreadable (%s); energy from the power model from now on", self.name, e)

    def _heartbeat_after(self, t: float) -> float:
        return heartbeat_after(t, self.cluster.heartbeat_ms / 1000, self.cfg.latency_ms / 1000)

    def _heartbeat(self) -> None:
        """Every `heartbeat_ms`: the core's tick (a STATE when one is due, the parked items tried again), the link
        estimates, the power meter, and the progress the site's status reads once a second."""
        t = self.clock.now()
        self.loop.at(self._heartbeat_after(t), self._heartbeat)
        actions = self.core.step(events.Tick(self.cluster.quiet_report_s, 5 * self.cluster.dead_after_ms / 1000,
                                             self.egress.queued_bytes(t), self.cluster.heartbeat_ms / 1000), t)
        if self.progress_due(t) and not any(isinstance(a, events.Report) for a in actions):
            actions.insert(0, events.Report())
        self.execute(actions, t)
        self.refresh_links(t)
        self.read_meter(t)

    # ---------------------------------------------------------------- graceful leave
    def hand_back(self, item: events.WorkItem, t: float) -> None:
        """A leaving node returns work to the source, which routes it anew (``Send``: the link and its codec)."""
        self.send_item(events.Send(item, self.source_name), t)

    def leave(self, grace_s: float | None = None) -> None:
        """SIGTERM (on the loop): stop taking work, tell every peer, hand back what is held and what still arrives
        for ``grace_s``, then stop (nothing is lost)."""
        t = self.clock.now()
        self.execute(self.core.step(events.Leave(), t), t)
        self.send_state()
        grace_s = grace_s if grace_s is not None else max(0.5, 3 * self.cluster.heartbeat_ms / 1000)
        self.loop.at(t + grace_s, self._left)

    def _left(self) -> None:
        self.send_state(final=True)
        self.stop.set()

    def serve_forever(self) -> None:
        """Run until a CONTROL shutdown arrives, or leave gracefully once `leave_requested` is set (workers)."""
        self.start()
        leaving = False
        try:
            while not self.stop.wait(0.05):
                if self.leave_requested.is_set() and not leaving:
                    leaving = True
                    self.loop.post(self.leave)
            self.clock.sleep(0.2)  # let the final STATE leave
        finally:
            self.close()
