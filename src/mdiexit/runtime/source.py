"""The source node: admits items from its arrivals (a dataset stream, or clients: runtime.service) through the
admission gate, can run tasks itself, and keeps a ledger of every admitted item until its one outcome (DESIGN §9,
§10). It watches every worker's heartbeats: a node silent for `dead_after_ms` (or whose process died) is down,
and the items in flight are dispatched again; so is any item overdue. Admission decisions come from an
`Admission` policy object. Every decision is the SourceCore's (runtime.sourcecore). The source is a node shell
(runtime.node.NodeProcess: sockets, loop, executors) composed with that core: it is the node's role, which gets
what only the source handles (results, STATEs, joins, its own finished items), and it owns the phases of the run.
What the live view and the status snapshot show of it is runtime.sourceview.

Admitting and draining are phases of the node's loop (runtime.loop), which owns the source core as it owns the
node core: after every round it offers what arrived, releases what the gate lets through and answers what settled.
The launcher's thread starts a phase and waits for its end; the live view, the status snapshot and the metrics ask
the loop for what they show."""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from mdiexit.config import ClusterConfig
from mdiexit.package import Package, package_archive
from mdiexit.policies.gate import REJECT_WHY, STOPPING, AdmissionGate
from mdiexit.protocol.messages import Control, Join, Part, Result, Rollout, State
from mdiexit.runtime.arrivals import Arrivals, Offer
from mdiexit.runtime.deploy import Deployer
from mdiexit.runtime.events import (
    Answer,
    Back,
    ControlStep,
    Dispatch,
    Finished,
    Offered,
    PeerDown,
    Release,
    ResultIn,
    Retire,
    SourceEvent,
    StateIn,
    Supervise,
    TakeOut,
    WorkItem,
)
from mdiexit.runtime.join import member_message, welcome_frames
from mdiexit.runtime.node import NodeProcess, encode, member_config
from mdiexit.runtime.nodestats import final_stats
from mdiexit.runtime.options import ClusterError
from mdiexit.runtime.sourcecore import (
    ADMIT_LOOK_S,
    CONTROL_PERIOD_S,
    WINDOW_SPAN_S,
    Admission,
    FixedAdmission,
    SourceCore,
)

__all__ = ["Admission", "FixedAdmission", "SourceProcess"]

log = logging.getLogger("mdiexit.source")
LATENCY_SAMPLES = 100_000  # a service's summary reports the latencies of this many last results
PROGRESS_SAMPLES = 4  # a node's utilisation and tasks/s in the status are taken over its last reports (~3 s)
DRAIN_LOOK_S = 0.02  # while draining, this often


@dataclass
class Phase:
    """Admitting or draining, as the loop runs it; the launcher's thread waits on ``ended``."""

    arrivals: Arrivals
    until: float | None  # when it ends at the latest (None: when ``stop`` is set, or the arrivals end)
    stop: threading.Event | None = None
    draining: bool = False
    start: float = 0.0
    end: float = 0.0
    last_step: float = 0.0  # the last control step
    ended: threading.Event = dataclasses.field(default_factory=threading.Event)


class SourceProcess:
    """The source: a node shell (runtime.node.NodeProcess, whose role this is) and a SourceCore. The node's loop
    runs both; what only the source handles (results, STATEs, joins, its own finished items) comes here."""

    def __init__(self, cluster: ClusterConfig, name: str, pkg: Package, *, admission: Admission,
                 gate: AdmissionGate | None = None, **node_options):
        self.node = NodeProcess(cluster, name, pkg, role=self, **node_options)
        self.loop, self.clock, self.name = self.node.loop, self.node.clock, name  # the node's, for good
        self.sc = SourceCore(name, self.node.rules, pkg.num_tasks, admission, gate or AdmissionGate(),
                             len(cluster.nodes) * cluster.max_batch, cluster.dead_after_ms / 1000, pkg.version)
        self.sc.run_start = self.clock.now()
        # the core's state, shared by reference (the launcher, the telemetry and the tests read it here)
        self.admission, self.gate, self.ledger = admission, self.sc.gate, self.sc.ledger
        self.reports, self.backlog_samples, self.timeline = self.sc.reports, self.sc.backlog_samples, self.sc.timeline
        self.last_heard, self.down, self.events = self.sc.last_heard, self.sc.down, self.sc.events
        self.final_stats: dict[str, dict[str, float]] = {}
        self.link_reports: dict[str, dict] = {}  # node -> peer -> its final link figures
        self.abort: str | None = None  # set (to a reason) when the run cannot go on
        self.phase = "starting"  # admitting | draining | done
        self.running: Phase | None = None  # the phase the loop runs
        self.welcome_archive: tuple[bytes, str] | None = None  # the package as sent to joiners (the served version's)
        self.packages_of: dict[str, tuple[str, ...]] = {}  # the package versions each node last said it holds
        self.deployer = Deployer(self)  # roll-outs of new package versions (runtime.deploy)
        self.loop.after.append(self._tick)
        self.intake = None  # the client endpoint while serving: its own refusals count as offered and rejected
        self.stream = None  # the arrivals a run admits from (a video's skipped frames are shown)
        self.latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)  # the last results' latencies (s)
        self.latency_observers: list[Callable[[float], None]] = [self.latencies.append]  # and metrics
        # the site's status: each node's last few progress reports (time, busy_s and tasks so far), its package
        self.progress: dict[str, deque[tuple[float, dict[str, float]]]] = {}
        self.package_of: dict[str, str | None] = {}  # each node's served version, as it last reported
        self.status_path = None
        self.node_backlog_s: dict[str, float] = {}  # each node's last reported backlog, all sources' items
        self.paused_until = -float("inf")  # a paused source takes no arrivals until then (a camera switched off)

    @property
    def run_start(self) -> float:
        return self.sc.run_start

    @run_start.setter
    def run_start(self, t: float) -> None:
        """When admission starts: the origin of every event's at_s (the core's), and of the node's run clock."""
        self.sc.run_start = t
        self.node.start_run(t)

    def run_elapsed_s(self, t: float) -> float | None:
        return None if self.phase == "starting" else t - self.run_start

    # ---------------------------------------------------------------- the node's
    def start(self) -> None:
        self.node.start()

    def close(self) -> None:
        self.node.close()

    # ---------------------------------------------------------------- its role: results, state, joins
    def heard(self, sender: str, t: float) -> None:
        self.sc.heard(sender, t)

    def on_join(self, msg: Join) -> None:
        """Let a new device in: its key was allowed (ZAP checked it), its name is new. It gets the cluster view
        and the package; every node learns it as a neighbour."""
        if msg.sender != msg.name:
            self.node.reject("impersonation", f"JOIN for {msg.name!r} from {msg.sender!r}")
            return
        if msg.name in self.down and msg.name in self.node.links:  # a joiner that failed, back again
            self._welcome(msg.name)
            return
        if any(n.name == msg.name for n in self.node.cluster.nodes):
            log.warning("%s: %s asked to join, but a member has that name; a member restarts with the cluster "
                        "file (`mdiexit worker --cluster F --name N`)", self.name, msg.name)
            return
        key = self.node.auth.key_of(msg.name) if self.node.auth is not None else None
        member = member_message(self.name, msg, key.decode() if key else None)
        node = member_config(member)
        self.node.add_member(node)
        self._welcome(node.name)
        frames = encode(member)
        for peer, link in self.node.links.items():
            if peer != node.name:
                link.send(frames, self.clock.now())
        self.events.append({"node": node.name, "kind": "joined", "at_s": self.clock.now() - self.run_start})

    def on_result(self, msg: Result) -> None:
        """Accepted only for an admitted item, from a node holding the task it exited at (DESIGN §6)."""
        if not self.sc.expects(msg.item_id):
            self.node.reject("unexpected_result", f"RESULT for item {msg.item_id}, which is not in flight")
            return
        if not self._could_compute(msg.sender, msg.exit):
            self.node.reject("unexpected_result", f"RESULT for item {msg.item_id} at exit {msg.exit} from "
                                                  f"{msg.sender!r}, which does not hold task {msg.exit}")
            return
        self.source_step(ResultIn(msg.item_id, msg.label, msg.exit, msg.confidence, msg.sender, msg.attempt,
                                  msg.expired, msg.backlog_s), self.clock.now())

    def _could_compute(self, sender: str, task: int) -> bool:
        try:
            return self.node.cluster.node(sender).holds(task)  # per result: no set built
        except KeyError:
            return False

    def deliver(self, f: Finished) -> None:
        """An item finished here, at the source: its result, as a worker's RESULT would bring it."""
        it = f.item
        self.source_step(ResultIn(it.item_id, f.label, f.exit, f.confidence, self.name, it.attempt), self.clock.now())

    def deliver_expired(self, item: WorkItem) -> None:
        self.source_step(ResultIn(item.item_id, 0, item.task, 0.0, self.name, item.attempt, expired=True),
                         self.clock.now())

    def on_state(self, msg: State) -> None:
        if msg.progress:
            samples = self.progress.setdefault(msg.sender, deque(maxlen=PROGRESS_SAMPLES))
            samples.append((self.clock.now(), dict(msg.progress)))
            self.package_of[msg.sender] = msg.package
            self.packages_of[msg.sender] = tuple(msg.packages)
        if msg.stats:
            self.final_stats[msg.sender] = dict(msg.stats)
        if msg.links:
            self.link_reports[msg.sender] = dict(msg.links)
        self.node_backlog_s[msg.sender] = msg.backlog_s  # the node's whole backlog, for the status and the live view
        backlog_s = msg.source_backlogs.get(self.name, msg.backlog_s)  # its share's, with several sources
        self.source_step(StateIn(msg.sender, backlog_s, msg.leaving, tuple(msg.packages), msg.package_error),
                         self.clock.now())

    def on_rollout(self, msg: Rollout) -> None:
        self.deployer.on_rollout(msg)

    def on_part(self, msg: Part, payload: bytes) -> None:
        self.deployer.on_part(msg, payload)

    def own_backlog_s(self, t: float) -> float:
        return self.node.core.backlog_of(self.name, t)

    def _welcome(self, name: str) -> None:
        if self.welcome_archive is None:
            self.welcome_archive = package_archive(self.node.cluster.package)
        keys = dict(self.node.identity.peers) if self.node.identity is not None else {}
        view = dataclasses.replace(self.node.cluster, mode=self.node.mode)  # the run's mode, maybe not the file's
        welcome, parts = welcome_frames(self.name, view, keys, self.welcome_archive)
        self.node.links[name].send(welcome, self.clock.now())
        self.node.bulk.add(name, parts)  # paced behind the data

    # ---------------------------------------------------------------- failures and recovery (DESIGN §9)
    def node_down(self, name: str, kind: str, t: float) -> None:
        """`name` crashed, hung or left: nobody routes to it, and every item in flight is dispatched again."""
        self.source_step(PeerDown(name, kind), t)

    def source_step(self, event: SourceEvent, t: float, arrivals: Arrivals | None = None) -> None:
        """Hand ``event`` to the source core and carry out what it decided (the simulator's SimSource carries out
        the same actions); ``arrivals`` answer the offers it refused."""
        for action in self.sc.step(event, t):
            match action:
                case Dispatch(item):
                    self.node.route(item, t)
                case Answer(key, outcome, reason):
                    arrivals.answer(key, outcome, reason, None)
                case TakeOut(name, kind, in_flight):
                    self.node.core.on_leave(name)
                    self.deployer.forget(name)
                    log.warning("%s: node %s is down (%s); re-dispatching %d items in flight", self.name, name,
                                kind, in_flight)
                case Back(name):
                    log.warning("%s: node %s is back", self.name, name)
                case Retire(package):
                    self.deployer.retire(package)

    def failure_summary(self) -> list[dict]:
        return self.sc.failure_summary()

    def rollout_records(self) -> list[dict]:
        """Every roll-out this source ran, for the summary (on its loop)."""
        return [r.record(self.run_start) for r in self.sc.rollouts]

    # ---------------------------------------------------------------- the run
    def wait_ready(self, workers: list[str], timeout: float) -> None:
        deadline = self.clock.now() + timeout
        while self.clock.now() < deadline and not self.abort:
            missing = [w for w in workers if w not in self.reports]
            if not missing:
                return
            self.clock.sleep(0.05)
        if self.abort:
            raise ClusterError(self.abort)
        missing = [w for w in workers if w not in self.reports]
        raise ClusterError(f"node(s) {', '.join(missing)} sent no heartbeat within {timeout:.0f} s")

    def admit(self, arrivals: Arrivals, duration_s: float | None = None,
              stop: threading.Event | None = None) -> tuple[float, float]:
        """Offer what ``arrivals`` bring to the gate and admit what it releases, for ``duration_s`` (None: until
        ``stop``, or the arrivals end). Every offer gets its one answer. Returns the (start, end) times. The loop
        admits; this thread waits."""
        phase = Phase(arrivals, None, stop)
        self.loop.post(partial(self._begin, phase, duration_s))
        self._wait(phase)
        return phase.start, phase.end

    def _begin(self, phase: Phase, duration_s: float | None) -> None:
        phase.start = phase.last_step = self.clock.now()
        if duration_s is not None:
            phase.until = phase.start + duration_s
        self.running = phase

    def _wait(self, phase: Phase) -> None:
        while not phase.ended.wait(0.1):  # in slices: Ctrl-C reaches this thread
            if phase.stop is not None and phase.stop.is_set():
                self.loop.wake()

    def _tick(self, t: float) -> float | None:
        """After every round of the loop: the phase running looks again. Returns when it wants to next."""
        phase = self.running
        if phase is None:
            return None
        return self._drain_tick(phase, t) if phase.draining else self._admit_tick(phase, t)

    def _end(self, phase: Phase, t: float) -> None:
        phase.end = t
        self.running = None
        phase.ended.set()

    def _admit_tick(self, phase: Phase, t: float) -> float | None:
        arrivals = phase.arrivals
        if self.abort or (phase.stop is not None and phase.stop.is_set()) or \
                (phase.until is not None and t >= phase.until):
            self._end(phase, t)
            return None
        if t - phase.last_step >= CONTROL_PERIOD_S:
            self.control_step(t, phase.start)
            phase.last_step = t
        paused = t < self.paused_until
        for offer in () if paused else arrivals.take(t):
            self.offer(offer, t, arrivals)
        self.release(t, arrivals)
        arrivals.shed(self.sc.shedding(t))
        self.answer_settled(arrivals)
        if arrivals.done and not self.gate.queue:
            self._end(phase, self.clock.now())
            return None
        # what it waits for: the next arrival, the next control step, the phase's end, and, while the gate holds
        # items, a look at it every ADMIT_LOOK_S (a message arriving runs this hook too: results need no timer)
        wake = min(self.paused_until if paused else arrivals.next_at(t), phase.last_step + CONTROL_PERIOD_S,
                   phase.until if phase.until is not None else math.inf)
        return min(wake, t + ADMIT_LOOK_S) if self.gate.queue else wake

    def pause(self, seconds: float) -> None:
        """Take no arrivals for ``seconds`` (a camera switched off; what arrives meanwhile waits where it is)."""
        self.loop.post(lambda: setattr(self, "paused_until", self.clock.now() + seconds))

    def offer(self, offer: Offer, t: float, arrivals: Arrivals) -> None:
        self.source_step(Offered(offer), t, arrivals)

    def release(self, t: float, arrivals: Arrivals) -> None:
        """Admit what the gate lets through now; answer what expired waiting (nothing to do while it holds none:
        the loop calls this after every round)."""
        if self.gate.queue:
            self.source_step(Release(self.own_backlog_s(t)), t, arrivals)

    def answer_settled(self, arrivals: Arrivals) -> None:
        for _, r in self.ledger.take_settled():
            reason = r.failed or ("its deadline passed before its result" if r.expired else "")
            arrivals.answer(r.key, r.outcome, reason, r)
            if r.done_at is not None:
                for observe in self.latency_observers:
                    observe(r.done_at - r.admitted_at)

    def control_step(self, t: float, start: float) -> None:
        """One admission-control step (every CONTROL_PERIOD_S): the core supervises, feeds the largest backlog to
        the policy and logs a timeline row; the shell carries out what supervision decided."""
        self.source_step(ControlStep(start, self.own_backlog_s(t)), t)
        self.deployer.tick(t)
        # the shell's own share, cumulative (differences between rows tell where the source's time went)
        self.timeline[-1].update(busy_s=self.node.busy_s, tasks_run=sum(self.node.core.tasks_run.values()),
                                 egress_bytes=self.node.egress.queued_bytes(t))

    def refuse_untaken(self, arrivals: Arrivals) -> None:
        for offer in arrivals.stop_taking():  # arrived, never offered: refused, and counted as offered
            self.gate.count_rejected(STOPPING)
            arrivals.answer(offer.key, "rejected", f"{STOPPING}: {REJECT_WHY[STOPPING]}", None)

    def drain(self, arrivals: Arrivals, timeout_s: float) -> None:
        """Admit what still waits at the gate, and wait for every admitted item's outcome, still recovering
        from failures meanwhile. Whatever is left at the timeout fails, with that reason: every offer is answered.
        The loop drains; this thread waits."""
        phase = Phase(arrivals, None, draining=True)
        self.loop.post(partial(self._begin_drain, phase, timeout_s))
        self._wait(phase)

    def _begin_drain(self, phase: Phase, timeout_s: float) -> None:
        self.refuse_untaken(phase.arrivals)
        phase.start = phase.last_step = self.clock.now()
        phase.until = phase.start + timeout_s
        self.running = phase

    def _drain_tick(self, phase: Phase, t: float) -> float | None:
        arrivals = phase.arrivals
        self.release(t, arrivals)
        self.answer_settled(arrivals)
        if t - phase.last_step >= CONTROL_PERIOD_S:
            phase.last_step = t
            self.source_step(Supervise(self.own_backlog_s(t)), t)
            self.deployer.tick(t)
            self.ledger.window(t, WINDOW_SPAN_S)
        if t < phase.until and not self.abort and (self.ledger.settled < self.ledger.admitted or self.gate.queue):
            return t + DRAIN_LOOK_S
        why = self.abort or f"no result within the {phase.until - phase.start:g} s drain"
        for p in self.gate.take_all():
            self.gate.rejected[STOPPING] += 1
            arrivals.answer(p.key.key, "rejected", f"{STOPPING}: {REJECT_WHY[STOPPING]}", None)
        self.refuse_untaken(arrivals)  # any that slipped in while the intake was stopping
        for item_id in self.ledger.in_flight_ids():
            self.ledger.fail(item_id, why)
        self.answer_settled(arrivals)
        self._end(phase, t)
        return None

    def shutdown_workers(self, timeout_s: float = 3.0) -> None:
        """Shut down every worker (not only the source's neighbours, joiners too); collect the live ones' counters."""
        workers = [w.name for w in self.node.cluster.workers]
        self.loop.ask(partial(self._send_shutdown, workers))
        deadline = self.clock.now() + timeout_s
        while self.clock.now() < deadline and any(w not in self.final_stats for w in workers if w not in self.down):
            self.clock.sleep(0.02)
        self.final_stats[self.name], self.link_reports[self.name] = self.loop.ask(self.own_final_stats)

    def _send_shutdown(self, workers: list[str]) -> None:
        frames = encode(Control(sender=self.name, action="shutdown"))
        for w in workers:
            if w in self.node.links:
                self.node.links[w].send(frames, self.clock.now())

    def own_final_stats(self) -> tuple[dict[str, float], dict]:
        """This node's counters and link figures at the end of the run (on its loop)."""
        return final_stats(self.node), self.node.meter.figures(self.clock.now())

    # ---------------------------------------------------------------- what its views show (runtime.sourceview)
    def labelled(self) -> bool:
        """Whether the stream's items carry true labels (a video's frames do not): else no accuracy is shown."""
        return getattr(self.stream, "labelled", True)

    def skipped(self) -> int:
        """A video stream's skipped frames so far (0 for any other stream)."""
        return getattr(self.stream, "skipped", 0)

    def accuracy(self) -> float | None:
        """Of the results so far, against their labels (None: no labelled result yet)."""
        led = self.ledger
        return led.correct / led.completed if led.completed and self.labelled() else None

    def joules_per_item(self) -> float | None:
        """The counted nodes' joules so far (each one's last progress report) per completed item."""
        joules = [samples[-1][1]["joules"] for samples in list(self.progress.values())
                  if samples and "joules" in samples[-1][1]]
        return sum(joules) / self.ledger.completed if joules and self.ledger.completed else None
