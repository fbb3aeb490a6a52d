"""SourceCore: the source's decisions without a clock, a thread or a socket (DESIGN §4). It holds the admission
gate, the admission policy, the ledger, what the nodes last reported and who is down; every method takes `now`.
The shell (runtime.source: sockets, threads, the live view) and the simulator (mdiexit.sim, virtual time) drive
the same core through one door, ``SourceCore.step(event, now) -> actions`` (the vocabulary: runtime.events): an
offer, a release, a control step, supervision, a RESULT, a STATE or a peer that died goes in; items to dispatch,
offers to answer (rejected, or expired waiting), nodes to take out or back come out, and both shells carry them
out alike."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from mdiexit.policies.gate import REJECT_WHY, AdmissionGate, Pending
from mdiexit.policies.modes import ModeRules, no_exit_thresholds
from mdiexit.runtime.arrivals import Offer
from mdiexit.runtime.events import (
    Answer,
    Back,
    ControlStep,
    Dispatch,
    Offered,
    PeerDown,
    Release,
    ResultIn,
    Retire,
    SourceAction,
    SourceEvent,
    StateIn,
    Supervise,
    TakeOut,
    WorkItem,
)
from mdiexit.runtime.ledger import Ledger
from mdiexit.runtime.rollout import SHADOW_BASE, RolloutCore, RolloutPlan

CONTROL_PERIOD_S = 0.1  # one admission-control step (and supervision) this often
ADMIT_LOOK_S = 0.01  # while admitting, the source looks at its arrivals at least this often (runtime and simulator)
WINDOW_SPAN_S = 2.0  # throughput and accuracy are measured over the last this many seconds
# The in-flight window follows the best recent throughput, forgotten with this time constant. Sized on the current
# throughput alone it spiralled down after any stall (a link that dropped, a node that failed) whenever the latency
# then exceeded the window's L: fewer in flight, fewer done, a smaller window, and so on, down to its minimum.
WINDOW_MEMORY_S = 10.0
EXPIRED_WAITING = "its deadline passed while it waited for admission"
BACKLOG_REFRESH_S = 0.005  # the largest reported backlog is recomputed at most this often (O(nodes) each time)


class Admission(Protocol):
    """What the source asks its admission policy (DESIGN §3.3). `FixedAdmission` below; controllers plug in here."""

    def rate(self) -> float: ...
    def thresholds(self) -> tuple[tuple[float, ...], int]: ...  # (thresholds, version)
    def step(self, max_backlog_s: float, t: float) -> None: ...


@dataclass
class FixedAdmission:
    rate_per_s: float
    fixed_thresholds: tuple[float, ...]

    def rate(self) -> float:
        return self.rate_per_s

    def thresholds(self) -> tuple[tuple[float, ...], int]:
        return self.fixed_thresholds, 0

    def step(self, max_backlog_s: float, t: float) -> None:
        pass


@dataclass
class NodeReport:
    """A node's last STATE, as the source keeps it."""

    backlog_s: float
    leaving: bool = False


@dataclass
class Supervision:
    """What one supervision step decided: nodes to take out of routing, and items to dispatch again."""

    down: list[tuple[str, int]] = field(default_factory=list)  # (node, items in flight when it went down)
    back: list[str] = field(default_factory=list)
    retries: list[WorkItem] = field(default_factory=list)


class SourceCore:
    def __init__(self, name: str, rules: ModeRules, num_tasks: int, admission: Admission, gate: AdmissionGate,
                 min_window: int, dead_after_s: float, package: str = ""):
        self.name, self.rules = name, rules
        self.package = package  # the package version admitted items run on, outside a roll-out's steps
        self.rollout: RolloutCore | None = None  # the last roll-out (runtime.rollout)
        self.rollouts: list[RolloutCore] = []  # every one, for the summary
        self.retired: set[str] = set()  # versions unloaded
        self.admission, self.gate = admission, gate
        self.ledger = Ledger()
        self.reports: dict[str, NodeReport] = {}
        self.backlog_samples: dict[str, list[float]] = {}
        self.timeline: list[dict] = []
        self.no_exits = tuple(no_exit_thresholds(num_tasks))
        self.last_heard: dict[str, float] = {}
        self.down: dict[str, float] = {}  # node -> when it was declared down
        self.events: list[dict] = []  # node failures, leaves and returns, for the summary and the live view
        self.run_start = 0.0
        self.dead_after_s = dead_after_s
        self.next_id = 0  # item ids run 0, 1, ... in admission order
        self.latency_s = 0.0  # recent median admission-to-result time, for the gate's deadline check
        self.min_window = min_window
        self.window = float(min_window)  # items allowed in flight (the gate's), from the throughput
        self.unloaded_s = math.inf
        self.peak_throughput = (0.0, 0.0)  # (items/s, when): the best recent throughput, for the window
        self.capacity_hint = 0.0  # items/s the window may count on before it is measured (runpolicy.capacity_hint)
        self._max_reported = (-math.inf, 0.0)  # (when computed, the largest reported backlog of the live nodes)

    # ---------------------------------------------------------------- the one entry point
    def step(self, event: SourceEvent, now: float) -> list[SourceAction]:
        """What ``event`` at ``now`` makes the source do. The runtime's source shell and the simulator's execute
        the same actions, so the order of the source's work is decided here once."""
        match event:
            case Offered(offer):
                why = self.offer(offer, now)
                return [] if why is None else [Answer(offer.key, "rejected", f"{why}: {REJECT_WHY[why]}")]
            case Release(own_backlog_s):
                items, expired = self.release(now, own_backlog_s)
                return [*(Answer(p.key.key, "expired", EXPIRED_WAITING) for p in expired),
                        *(Dispatch(item) for item in items)]
            case ControlStep(start, own_backlog_s):
                return self._supervised(self.control_step(now, start, own_backlog_s)) + self._rollout_step(now)
            case Supervise(own_backlog_s):
                return self._supervised(self.supervise(now, own_backlog_s)) + self._rollout_step(now)
            case ResultIn(item_id, label, exit_, confidence, node, attempt, expired, backlog_s):
                if backlog_s is not None:
                    self.on_backlog(node, backlog_s)
                if item_id >= SHADOW_BASE:
                    if self.rollout is not None:
                        self.rollout.on_twin(item_id, None if expired else label, exit_)
                    return []
                self.on_result(item_id, label, exit_, confidence, node, now, attempt, expired)
                return []
            case StateIn(sender, backlog_s, leaving, packages, package_error):
                self.heard(sender, now)
                if packages and self.rollout is not None:
                    self.rollout.on_packages(sender, list(packages), package_error, now)
                if self.on_state(sender, backlog_s, leaving, now):
                    return self._down(sender, "left", now)
                return []
            case PeerDown(name, kind):
                return self._down(name, kind, now)
        raise TypeError(f"not a source event: {event!r}")

    def _down(self, name: str, kind: str, now: float) -> list[SourceAction]:
        retries = self.node_down(name, kind, now)
        if retries is None:
            return []
        return [TakeOut(name, kind, len(retries)), *(Dispatch(item) for item in retries)]

    @staticmethod
    def _supervised(sup: Supervision) -> list[SourceAction]:
        return [*(Back(name) for name in sup.back), *(TakeOut(name, "silent", n) for name, n in sup.down),
                *(Dispatch(item) for item in sup.retries)]

    # ---------------------------------------------------------------- what arrives
    def heard(self, sender: str, t: float) -> None:
        self.last_heard[sender] = t

    def on_state(self, sender: str, backlog_s: float, leaving: bool, t: float) -> bool:
        """Record a STATE. True when the sender is leaving (the shell calls ``node_down``)."""
        self.reports[sender] = NodeReport(backlog_s, leaving)
        self.backlog_samples.setdefault(sender, []).append(backlog_s)
        return leaving

    def on_backlog(self, sender: str, backlog_s: float) -> None:
        """The backlog a RESULT carried: the node's latest, as a STATE's would be (it may stand in for one)."""
        report = self.reports.get(sender)
        if report is not None and not report.leaving:
            report.backlog_s = backlog_s

    def on_result(self, item_id: int, label: int, exit_: int, confidence: float, node: str, t: float,
                  attempt: int = 0, expired: bool = False) -> None:
        if expired:
            settled = self.ledger.expire(item_id, t)
        else:
            settled = self.ledger.complete(item_id, label, exit_, confidence, node, t, attempt)
        if settled and self.rollout is not None:
            r = self.ledger.records.get(item_id)
            if r is not None:
                label = r.label if r.done_at else None
                self.rollout.on_result(item_id, r.package, r.exit, t - r.admitted_at, label)

    def expects(self, item_id: int) -> bool:
        """A RESULT for this id would be legitimate: an admitted item's, or a roll-out's shadow copy's."""
        if item_id >= SHADOW_BASE:
            return self.rollout is not None and self.rollout.expects(item_id)
        return self.ledger.expects(item_id)

    # ---------------------------------------------------------------- roll-outs (runtime.rollout)
    def start_rollout(self, plan: RolloutPlan, package: str, t: float) -> str | None:
        """Begin rolling ``plan.new`` out (its shipping is the shell's); or why not."""
        if self.rollout is not None and not self.rollout.done:
            return f"a roll-out of {self.rollout.plan.new} is in progress"
        if plan.new == self.package:
            return f"{plan.new} is the version served already"
        self.rollout = RolloutCore(plan, package, t)
        self.rollouts.append(self.rollout)
        return None

    def _rollout_step(self, t: float) -> list[SourceAction]:
        """The roll-out's control step: its gates and steps; once it ended, the version no item runs any more is
        retired when its last item in flight is done."""
        ro = self.rollout
        if ro is None:
            return []
        if not ro.done:
            live = [self.name, *(n for n in self.reports if n not in self.down)]
            ro.tick(t, live)
            if ro.done:
                self.package = ro.current
        retired = ro.retired
        if retired is None or retired in self.retired:
            return []
        if any(r.package == retired for r in self.ledger.in_flight.values()):
            return []
        self.retired.add(retired)
        return [Retire(retired)]

    def max_backlog_s(self, own_backlog_s: float, t: float) -> float:
        """The largest backlog in the cluster: this node's, or the last one a live node reported."""
        at, reported = self._max_reported
        if t - at >= BACKLOG_REFRESH_S or t < at:
            reported = max((r.backlog_s for n, r in self.reports.items() if n not in self.down), default=0.0)
            self._max_reported = (t, reported)
        return max(own_backlog_s, reported)

    # ---------------------------------------------------------------- admission
    def offer(self, offer: Offer, t: float) -> str | None:
        """Queue an offer at the gate, or return why not (policies.gate). Its x is None in the simulator."""
        deadline = None if offer.deadline_s is None else t + offer.deadline_s
        return self.gate.offer(offer, t, self.admission.rate(), deadline, self.latency_s)

    def shedding(self, t: float) -> bool:
        """Whether the gate refuses new offers now (overloaded): a service may refuse them at the door."""
        return self.gate.shedding(t, self.admission.rate())

    def release(self, t: float, own_backlog_s: float) -> tuple[list[WorkItem], list[Pending]]:
        """Admit what the gate lets through now: (work items to route, offers that expired waiting)."""
        released, expired = self.gate.release(t, self.admission.rate(), self.max_backlog_s(own_backlog_s, t),
                                              len(self.ledger.in_flight), self.window)
        items = []
        ro = self.rollout
        for p in released:
            o: Offer = p.key
            thresholds, version = self.admission.thresholds() if self.rules.exits else (self.no_exits, 0)
            i, self.next_id = self.next_id, self.next_id + 1
            # the version it runs on; it travels with the item once a roll-out began ("": the nodes' first)
            package, twin = ro.version_for() if ro is not None else (self.package, None)
            self.ledger.admit(i, t, o.truth, o.x, thresholds, version, p.deadline, o.key, package)
            items.append(WorkItem(i, 1, o.x, t, thresholds, version, deadline=p.deadline, source=self.name,
                                  package=package if ro is not None else ""))
            if twin is not None:  # its shadow copy: the other version's label, for the roll-out's agreement
                items.append(WorkItem(ro.twin_id(i, twin), 1, o.x, t, thresholds, version, source=self.name,
                                      package=twin))
        return items, expired

    def control_step(self, t: float, start: float, own_backlog_s: float) -> Supervision:
        """One admission-control step (every CONTROL_PERIOD_S): supervise, feed the largest backlog to the
        policy, size the in-flight window and log a timeline row."""
        sup = self.supervise(t, own_backlog_s)
        self.latency_s = self.ledger.recent_latency_s(50)
        max_backlog = self.max_backlog_s(own_backlog_s, t)
        self.admission.step(max_backlog, t)
        self.backlog_samples.setdefault(self.name, []).append(own_backlog_s)
        # over the time there has been, at most WINDOW_SPAN_S: one measurement for the timeline and the window
        throughput, accuracy = self.ledger.window(t, min(WINDOW_SPAN_S, max(t - start, CONTROL_PERIOD_S)))
        if self.ledger.recent:  # the lowest latency seen: under load every recent latency includes queueing
            self.unloaded_s = min(self.unloaded_s, self.ledger.recent_latency_s(5))
        if t - start >= 1.0:
            expected = max(self.recent_peak(throughput, t), self.capacity_hint)
            self.window = self.gate.window(expected, self.unloaded_s, self.min_window)
        thresholds, _ = self.admission.thresholds()
        state = getattr(self.admission, "state", dict)()
        self.timeline.append({"t_s": t - start, "rate": self.admission.rate(),
                              "operating_point": state.get("operating_point", ""),
                              "thresholds": " ".join(f"{x:g}" for x in thresholds), "max_backlog_s": max_backlog,
                              "throughput_per_s": throughput, "accuracy": accuracy,
                              "target_backlog_s": state.get("target_backlog_s", ""), "own_backlog_s": own_backlog_s,
                              "in_flight": len(self.ledger.in_flight), "window": self.window,
                              "queued": len(self.gate.queue)})
        return sup

    def recent_peak(self, throughput: float, t: float) -> float:
        """The larger of ``throughput`` and the best recent one, decayed with WINDOW_MEMORY_S."""
        peak, at = self.peak_throughput
        decayed = peak * math.exp(-max(0.0, t - at) / WINDOW_MEMORY_S)
        if throughput >= decayed:
            self.peak_throughput = (throughput, t)
            return throughput
        return decayed

    # ---------------------------------------------------------------- failures and recovery (DESIGN §9)
    def node_down(self, name: str, kind: str, t: float) -> list[WorkItem] | None:
        """`name` crashed, hung or left: every item in flight is dispatched again (an item may be on it or on its
        way there; other attempts' late results are dropped). None when it was down already (or is this node)."""
        if name in self.down or name == self.name:
            return None
        self.down[name] = t
        pending = self.ledger.in_flight_ids()
        self.events.append({"node": name, "kind": kind, "at_s": t - self.run_start, "in_flight": len(pending),
                            "pending": set(pending), "recovery_s": None})
        return [w for i in pending if (w := self.retry(i, t, f"node {name} {kind}")) is not None]

    def retry(self, item_id: int, t: float, why: str) -> WorkItem | None:
        r = self.ledger.retry(item_id, t, why)
        if r is None:
            failed = self.ledger.records.get(item_id)
            if self.rollout is not None and failed is not None and failed.failed:
                self.rollout.on_failed(failed.package, failed.failed, t)
            return None
        return WorkItem(item_id, 1, r.x, r.admitted_at, r.thresholds, r.thresholds_version, attempt=r.attempt,
                        source=self.name, package=r.package if self.rollout is not None else "")

    def supervise(self, t: float, own_backlog_s: float) -> Supervision:
        """Declare silent nodes down, notice returning ones, re-dispatch overdue items, expire those past their
        deadline, close recoveries."""
        sup = Supervision()
        for name, heard in list(self.last_heard.items()):
            if name in self.down:
                report = self.reports.get(name)
                if heard > self.down[name] and report is not None and not report.leaving:
                    del self.down[name]
                    self.events.append({"node": name, "kind": "back", "at_s": t - self.run_start})
                    sup.back.append(name)
            elif t - heard > self.dead_after_s:
                retries = self.node_down(name, "silent", t)
                if retries is not None:
                    sup.down.append((name, self.events[-1]["in_flight"]))
                    sup.retries += retries
        overdue_s = max(3 * self.dead_after_s,
                        4 * (self.max_backlog_s(own_backlog_s, t) + self.ledger.recent_latency_s()))
        for item_id in self.ledger.overdue(t, overdue_s):
            if (w := self.retry(item_id, t, f"no result after {overdue_s:.1f} s")) is not None:
                sup.retries.append(w)
        for item_id in self.ledger.past_deadline(t):
            self.ledger.expire(item_id, t)
        for e in self.events:
            if e.get("pending"):
                e["pending"] = {i for i in e["pending"] if i in self.ledger.in_flight}
                if not e["pending"]:
                    e["recovery_s"] = t - self.run_start - e["at_s"]
        return sup

    def failure_summary(self) -> list[dict]:
        return [{k: v for k, v in e.items() if k != "pending"} for e in self.events]
