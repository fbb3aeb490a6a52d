"""When a node's heartbeat sends a STATE, and which peers it may skip (DESIGN §3.2): the reporting half of a node's
decisions, owned by its NodeCore (runtime.core) and so by the one thread that owns the core. Pure: time is an
argument, and the node's backlog, parked count and service estimates are handed in.

- A STATE goes when the node's state moved by more than the offloading rule's hysteresis since the last one, or
  items were parked or unparked; otherwise once every quiet period (an idle cluster's heartbeats were most of its
  runtime's CPU, docs/bench/overhead.md). A peer moves no work for a smaller difference, and the DATA and RESULT
  between carry the exact backlog.
- It skips the peers a DATA or RESULT told the backlog since the last heartbeat, as long as their last STATE is
  within the quiet period: that still brings them the service estimates, link acknowledgements and liveness.
- Every node's heartbeats fall on one grid of the shared clock (``heartbeat_after``)."""

from __future__ import annotations

import math

MIN_MOVE_S = 1e-4  # a state that moved by less than this has not moved (without a hysteresis)


def heartbeat_after(t: float, period_s: float, own_latency_s: float) -> float:
    """The node's next heartbeat after one due about ``t``. Every node's fall on one grid of the shared clock, each
    moved earlier by its own access latency: a path pays both ends' latencies, so the STATEs of all a node's peers
    reach it together, and it wakes once for them instead of once each (a wake-up after a pause costs more than
    the message, docs/bench/overhead.md). Rounded, so a timer that fires a little early or late keeps its slot."""
    return (round((t + own_latency_s) / period_s) + 1) * period_s - own_latency_s


def due_after(period_s: float, heartbeat_s: float) -> float:
    """How long after the last one a thing done once every ``period_s`` at heartbeats ``heartbeat_s`` apart is due:
    at the heartbeat nearest the period's end. On the grid a timer fires a little early or late; without the half
    heartbeat's slack, one 0.4 ms early made a still node's STATE wait a whole heartbeat more."""
    return period_s - heartbeat_s / 2


class Reporting:
    """What the node's last STATE said, and which peers its DATA and RESULT messages told the backlog since."""

    def __init__(self, hysteresis_s: float):
        self.tolerance_s = max(hysteresis_s, MIN_MOVE_S)
        self.reported: tuple[float, int, dict[int, float]] | None = None  # (backlog_s, parked, estimates)
        self.reported_at = -math.inf
        self.told_at: dict[str, float] = {}  # when a DATA or RESULT last went to each peer
        self.stated_at: dict[str, float] = {}  # when the peers skipped last had their last STATE
        self.ticked_at = -math.inf  # the last heartbeat

    def on_heartbeat(self, now: float, quiet_s: float, backlog_s: float, parked: int, estimates: dict[int, float],
                     several_sources: bool) -> frozenset[str] | None:
        """This heartbeat's STATE: None when none is due, else the peers it may skip. With ``several_sources`` it
        skips none, as only a STATE carries each source's fair-share backlog."""
        last_report = self.reported_at
        due = self.due(now, quiet_s, backlog_s, parked, estimates)
        skip = None if not due else frozenset() if several_sources else self._told_enough(now, quiet_s, last_report)
        self.ticked_at = now
        return skip

    def due(self, now: float, quiet_s: float, backlog_s: float, parked: int, estimates: dict[int, float]) -> bool:
        """Whether a STATE goes now (and if so, it is taken as said)."""
        if now - self.reported_at < quiet_s and not self._moved(backlog_s, parked, estimates):
            return False
        self.reported, self.reported_at = (backlog_s, parked, estimates), now
        return True

    def _moved(self, backlog_s: float, parked: int, estimates: dict[int, float]) -> bool:
        if self.reported is None:
            return True
        last_backlog_s, last_parked, last_estimates = self.reported
        return (abs(backlog_s - last_backlog_s) > self.tolerance_s or parked != last_parked
                or any(abs(s - last_estimates.get(task, math.inf)) > self.tolerance_s for task, s in estimates.items()))

    def told(self, peer: str, now: float) -> None:
        """A DATA or RESULT to ``peer`` carries the node's backlog."""
        self.told_at[peer] = now

    def _told_enough(self, now: float, quiet_s: float, last_report: float) -> frozenset[str]:
        """The peers told the backlog since the last heartbeat whose last STATE is within ``quiet_s``."""
        stated = {p: self.stated_at.get(p, last_report) for p, t in self.told_at.items() if t > self.ticked_at}
        self.stated_at = {p: at for p, at in stated.items() if now - at < quiet_s}
        return frozenset(self.stated_at)
