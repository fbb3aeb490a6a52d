"""Decentralised, per-task offloading (DESIGN §3.2). Pure code: time is always an argument.

Node n has an item that next needs task k. It estimates when task k would finish on itself and on
each neighbour m that holds k, and sends the item to the smallest estimate:

    finish_n = W_n + s_n(k)
    finish_m = W_m(reported) + sent_since_report(n->m) + (queued_bytes(n->m) + bytes_k) * 8 / bw(n->m)
               + latency(n->m) + s_m(k)

Work moves only when it beats local by more than a hysteresis margin; neighbours whose last report is
older than ``stale_after_s`` are unavailable; an item at or past the hop limit runs locally when the
node holds its task. A node that does not hold the task must forward it (hysteresis does not apply).

The energy objective (``EnergyWeights``, a cluster's ``objective: energy``) weighs joules beside time: of the
candidates that finish within ``slack_s`` of the soonest, the item goes where task k costs the fewest joules above
idle, extra_w(m)·s_m(k) plus the sender's joules for its bytes when it leaves. A candidate whose watts are unknown
makes the rule fall back to the soonest finish.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# Decision.reason values
LOCAL = "local"  # local estimate is best (or no neighbour beats it by the hysteresis margin)
OFFLOAD = "offload"  # a neighbour beats local by more than the hysteresis margin
HOP_LIMIT = "hop_limit"  # at/past the hop limit: run locally
FORWARD = "forward"  # we do not hold the task: sent to the best available holder
NO_HOLDER = "no_holder"  # we do not hold the task and no fresh neighbour holds it: keep it queued


@dataclass
class NeighbourView:
    """What node n knows about neighbour m: its last report plus what n has sent since.

    ``bandwidth_bps`` of None (or inf) means an unlimited link. ``bandwidth_bps`` and ``latency_s`` are the
    configured figures, or the node's own estimates with measured links (policies/linkestimate.py).
    ``service_s`` maps task index to m's service time per item, as last reported.
    """

    name: str
    holds_tasks: frozenset[int]
    backlog_s: float = 0.0
    reported_at: float = -math.inf
    sent_since_report_s: float = 0.0
    bandwidth_bps: float | None = None
    latency_s: float = 0.0
    queued_bytes: int = 0
    service_s: dict[int, float] = field(default_factory=dict)
    extra_w: float | None = None  # m's watts above idle while it computes (its power model), None: unknown
    # several sources: m's backlog for each one's items under its fair queueing (policies.fairqueue), as last reported
    source_backlogs: dict[str, float] = field(default_factory=dict)

    def is_fresh(self, now: float, stale_after_s: float) -> bool:
        """True when the last report is no older than ``stale_after_s``."""
        return self.reported_at >= now - stale_after_s

    def transfer_s(self, nbytes: int) -> float:
        """Seconds to push ``queued_bytes + nbytes`` through the link, plus its latency."""
        bw = self.bandwidth_bps
        wire = 0.0 if bw is None or math.isinf(bw) else (self.queued_bytes + nbytes) * 8.0 / bw
        return wire + self.latency_s

    def finish_estimate(self, task: int, bytes_to_send: int, source: str | None = None) -> float | None:
        """finish_m for ``task`` of an item of ``source`` (its fair-share backlog, where m reports one), or None
        when m does not hold it or has no usable estimate."""
        if task not in self.holds_tasks:
            return None
        s = self.service_s.get(task)
        if s is None or not math.isfinite(s) or s < 0:
            return None
        bw = self.bandwidth_bps
        if bw is not None and not bw > 0:
            return None
        backlog = self.source_backlogs.get(source, self.backlog_s) if self.source_backlogs else self.backlog_s
        return backlog + self.sent_since_report_s + self.transfer_s(bytes_to_send) + s

    # --- bookkeeping helpers for the driver (runtime or simulator)
    def on_report(self, backlog_s: float, at: float, service_s: Mapping[int, float] | None = None,
                  source_backlogs: Mapping[str, float] | None = None) -> None:
        """A STATE (or any message) from m arrived: take its backlog and forget what was sent before."""
        self.backlog_s = backlog_s
        if source_backlogs is not None:
            self.source_backlogs = dict(source_backlogs)
        self.reported_at = at
        self.sent_since_report_s = 0.0
        if service_s is not None:
            self.service_s = dict(service_s)

    def on_sent(self, task: int) -> None:
        """We sent m one item needing ``task``: its backlog grows by its service time for it."""
        self.sent_since_report_s += self.service_s.get(task, 0.0)


@dataclass(frozen=True)
class OffloadConfig:
    """Offloading parameters (seconds)."""

    hysteresis_s: float = 0.002
    hop_limit: int = 4
    stale_after_s: float = 0.5


@dataclass(frozen=True)
class EnergyWeights:
    """The energy objective at one node: what its own compute and sends cost, and how much later than the soonest
    finish an item may end to save joules."""

    own_extra_w: float  # this node's watts above idle while it computes
    j_per_byte: float  # joules this node spends per byte it sends
    slack_s: float  # a candidate finishing up to this much after the soonest may be chosen for fewer joules


@dataclass(frozen=True)
class Decision:
    """Where to run the task: ``target`` is a neighbour's name, or None for "run here" (``reason``
    LOCAL / HOP_LIMIT) or "keep it queued" (``reason`` NO_HOLDER). ``estimates`` holds the finish-time
    estimate of every candidate considered, keyed by node name ("" for the local node)."""

    target: str | None
    reason: str
    estimates: dict[str, float] = field(default_factory=dict)

    @property
    def local(self) -> bool:
        """Run the task on this node."""
        return self.target is None and self.reason in (LOCAL, HOP_LIMIT)

    @property
    def no_holder(self) -> bool:
        """No available node can run the task; the caller keeps the item queued."""
        return self.reason == NO_HOLDER


SELF = ""  # key of the local estimate in Decision.estimates


def choose_target(task: int, bytes_to_send: int | Mapping[str, int], own_backlog_s: float, own_service_s: float | None,
                  neighbours: Iterable[NeighbourView], hops: int, now: float,
                  cfg: OffloadConfig | None = None, energy: EnergyWeights | None = None,
                  source: str | None = None) -> Decision:
    """Pick where ``task`` runs for one item (DESIGN §3.2).

    Args:
        task: 1-based index of the task the item needs next.
        bytes_to_send: the item's payload size on the wire (after compression, if the link compresses); a
            mapping gives it per neighbour name, for links that compress differently.
        own_backlog_s: W_n, this node's backlog in seconds.
        own_service_s: s_n(task), or None when this node does not hold the task.
        neighbours: the views of this node's neighbours.
        hops: how many times the item has already been sent between nodes.
        now: the current time, in the same clock as ``NeighbourView.reported_at``.
        cfg: policy parameters (defaults if None).
        energy: the energy objective's weights at this node, or None for the soonest finish.
        source: the item's source, where several share the cluster: each neighbour's backlog is the one that
            source's items see under fair queueing (``own_backlog_s`` should be too).
    """
    cfg = cfg or OffloadConfig()
    holds = own_service_s is not None
    estimates: dict[str, float] = {}
    if holds:
        local = own_backlog_s + own_service_s  # type: ignore[operator]
        estimates[SELF] = local
        if hops >= cfg.hop_limit:
            return Decision(None, HOP_LIMIT, estimates)
    best_name: str | None = None
    best = math.inf
    joules: dict[str, float | None] = {SELF: energy.own_extra_w * own_service_s} if holds and energy else {}
    for m in neighbours:
        if not m.is_fresh(now, cfg.stale_after_s):
            continue
        nbytes = bytes_to_send if isinstance(bytes_to_send, int) else bytes_to_send[m.name]
        est = m.finish_estimate(task, nbytes, source)
        if est is None:
            continue
        estimates[m.name] = est
        if energy is not None:
            joules[m.name] = None if m.extra_w is None else m.extra_w * m.service_s[task] + energy.j_per_byte * nbytes
        if est < best or (est == best and best_name is not None and m.name < best_name):
            best, best_name = est, m.name
    if energy is not None and (pick := _fewest_joules(estimates, joules, energy.slack_s)) is not None:
        if pick == SELF:
            return Decision(None, LOCAL, estimates)
        return Decision(pick, OFFLOAD if holds else FORWARD, estimates)
    if not holds:
        if best_name is None:
            return Decision(None, NO_HOLDER, estimates)
        return Decision(best_name, FORWARD, estimates)
    if best_name is not None and best < estimates[SELF] - cfg.hysteresis_s:
        return Decision(best_name, OFFLOAD, estimates)
    return Decision(None, LOCAL, estimates)


def _fewest_joules(estimates: Mapping[str, float], joules: Mapping[str, float | None], slack_s: float) -> str | None:
    """The candidate within ``slack_s`` of the soonest finish that costs the fewest joules (ties: the sooner, then
    the name); None when there is no candidate or one's joules are unknown."""
    if not estimates or any(j is None for j in joules.values()):
        return None
    soonest = min(estimates.values())
    eligible = [n for n, est in estimates.items() if est <= soonest + slack_s]
    return min(eligible, key=lambda n: (joules[n], estimates[n], n))


class ServiceEstimator:
    """Per-task service time s_n(k) in seconds per item: an exponential moving average of measurements,
    initialised from ``macs / rated_macs_per_s`` before the first one (DESIGN §2)."""

    def __init__(self, task_macs: Mapping[int, int], rated_macs_per_s: float, alpha: float = 0.2) -> None:
        if not rated_macs_per_s > 0:
            raise ValueError(f"rated_macs_per_s: expected a positive number, got {rated_macs_per_s!r}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha: expected a number in (0, 1], got {alpha!r}")
        self.alpha = alpha
        self.rated_macs_per_s = float(rated_macs_per_s)
        self._est: dict[int, float] = {int(k): float(m) / rated_macs_per_s for k, m in task_macs.items()}
        self._count: dict[int, int] = {k: 0 for k in self._est}

    @classmethod
    def from_package(cls, package: object, rated_macs_per_s: float, tasks: Iterable[int] | None = None,
                     alpha: float = 0.2) -> ServiceEstimator:
        """Initial estimates for ``tasks`` (all if None) of a :class:`mdiexit.package.Package`."""
        wanted = None if tasks is None else set(tasks)
        macs = {t.index: t.macs for t in package.tasks  # type: ignore[attr-defined]
                if wanted is None or t.index in wanted}
        return cls(macs, rated_macs_per_s, alpha)

    def seed(self, task: int, seconds_per_item: float) -> None:
        """Replace the prior of ``task`` (before any measurement) with a better one, e.g. a calibrated time."""
        if self._count.get(task, 0) == 0 and math.isfinite(seconds_per_item) and seconds_per_item >= 0:
            self._est[task] = float(seconds_per_item)

    def update(self, task: int, seconds_per_item: float) -> float:
        """Fold in one measurement (non-finite or negative values are ignored); returns the new estimate."""
        if task not in self._est:
            raise KeyError(f"task {task}: no estimate (this node was not given its MACs)")
        if math.isfinite(seconds_per_item) and seconds_per_item >= 0:
            self._est[task] += self.alpha * (seconds_per_item - self._est[task])
            self._count[task] += 1
        return self._est[task]

    def get(self, task: int) -> float:
        """Current estimate for ``task``, seconds per item."""
        try:
            return self._est[task]
        except KeyError:
            raise KeyError(f"task {task}: no estimate (this node was not given its MACs)") from None

    def measurements(self, task: int) -> int:
        """How many measurements have been folded in for ``task``."""
        return self._count.get(task, 0)

    def snapshot(self) -> dict[int, float]:
        """All estimates, e.g. for a STATE message."""
        return dict(self._est)

    def backlog(self, queued_tasks: Iterable[int]) -> float:
        """W_n: the sum of the estimated service times of the queued tasks (one entry per queued item)."""
        return sum(self._est.get(t, 0.0) for t in queued_tasks)
