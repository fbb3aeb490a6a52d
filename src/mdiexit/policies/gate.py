"""The admission gate (DESIGN §10): a bounded queue in front of the cluster. Pure code: time is passed in.

Every offered item is, at once, either queued or rejected with a reason; a queued item is later released
(admitted into the cluster) or expired. Nothing waits without bound, and nothing is dropped unanswered.

- **Release.** The head of the queue leaves when a token is available (tokens accrue at the admission
  policy's rate λ, at most ``burst_s`` of it banked and at least MIN_BANKED_TOKENS, so that a release loop that
  wakes late loses no token: with one token banked, a stream offered at exactly λ lost up to the loop's lateness
  in every period, 5-10 % of it at 20/s), the largest backlog in the cluster is
  under ``max_backlog_s``, and fewer items are in flight than the window. The caps bound latency whatever
  the offered load: rate adaptation keeps the backlog near its target W*, below them; a fixed rate above
  capacity meets them and the queue fills. The backlog cap alone does not bound latency on a path of several
  nodes (an item queues at each); the window does, by Little's law: with at most T·L items in flight at
  throughput T, the mean latency is at most L (``window``; L = ``max_backlog_s``, at least twice the
  unloaded latency so the window cannot starve the cluster).
- **Rejected: overloaded.** The queue's expected wait (its length over the rate it drains at) would pass
  ``max_wait_s``, or it holds ``max_items``. The rate it drains at is what it released in the last second when
  the queue was never empty in that second, or the cluster is at its backlog cap or window (it takes what it can);
  otherwise at least the admission policy's rate λ: a queue that was idle released little because little was
  offered, and a burst on an idle service is judged by what the cluster can take, not by what it was given.
- **Rejected: deadline.** The item's deadline falls before its estimated completion: now + expected wait +
  the recent latency of admitted items.
- **Expired.** A queued item whose deadline has passed.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

OVERLOADED = "overloaded"
DEADLINE = "deadline"
STOPPING = "stopping"
# Rounding slack on a whole token: arrivals exactly 1/λ apart earn 1 - 1e-16 tokens, and with a bucket of one token
# each such miss would be lost for good (the queue could never catch up).
TOKEN_EPS = 1e-9
MIN_BANKED_TOKENS = 2.0
REJECT_WHY = {
    OVERLOADED: "the service is at capacity; retry later or lower the request rate",
    DEADLINE: "its deadline would pass before a result could come back; give it more time (deadline_ms)",
    STOPPING: "the service is shutting down",
}


@dataclass
class Pending:
    key: Any  # what the offerer needs to answer it
    offered_at: float
    deadline: float | None = None  # absolute, in the gate's clock


@dataclass
class AdmissionGate:
    max_backlog_s: float = 0.6
    max_wait_s: float = 0.25
    max_items: int = 100_000  # a hard bound on memory, whatever the rates
    burst_s: float = 0.1
    queue: deque[Pending] = field(default_factory=deque)
    tokens: float = 1.0
    last_t: float | None = None
    released_at: deque[float] = field(default_factory=deque)  # release times of the last second
    with_deadline: int = 0  # queued items that carry a deadline (the expiry scan runs only if any)
    started_at: float | None = None  # the first offer
    busy_since: float | None = None  # since when the queue has held items without a break (None: empty)
    cluster_full: bool = False  # the last release found the cluster at its backlog cap or its window
    offered: int = 0
    released: int = 0
    expired: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    @classmethod
    def combined(cls, gates: list[AdmissionGate]) -> AdmissionGate:
        """The site's gate counters (offered, rejected, expired) over every source's gate, for a summary."""
        total = cls()
        for g in gates:
            total.offered += g.offered
            total.expired += g.expired
            total.rejected.update(g.rejected)
        return total

    def __post_init__(self) -> None:
        if self.max_backlog_s <= 0 or self.max_wait_s < 0 or self.max_items < 1:
            raise ValueError("need max_backlog_s > 0, max_wait_s >= 0 and max_items >= 1")

    def drain_rate(self, t: float, rate: float) -> float:
        """Items per second the queue drains at: at least λ during the first second (nothing is measured yet, and
        the in-flight window starts small) and while the queue was recently empty with room in the cluster (its
        releases were what was offered); otherwise the last second's releases."""
        while self.released_at and self.released_at[0] < t - 1.0:
            self.released_at.popleft()
        measured = float(len(self.released_at))
        starting = self.started_at is None or t - self.started_at < 1.0  # nothing measured yet
        idle = not self.cluster_full and (self.busy_since is None or t - self.busy_since < 1.0)
        return max(measured, rate, 1e-9) if starting or idle else max(measured, 1e-9)

    def expected_wait_s(self, t: float, rate: float) -> float:
        return len(self.queue) / self.drain_rate(t, rate)

    def shedding(self, t: float, rate: float) -> bool:
        """Whether an offer now would be refused as OVERLOADED: the queue is full, or what it holds would wait
        longer than max_wait_s. A service refuses requests at the door while this holds (runtime.service)."""
        return self._shedding(self.expected_wait_s(t, rate) if self.queue else 0.0)

    def _shedding(self, wait_s: float) -> bool:
        return len(self.queue) >= self.max_items or (bool(self.queue) and wait_s > self.max_wait_s)

    def offer(self, key: Any, t: float, rate: float, deadline: float | None = None,
              latency_s: float = 0.0) -> str | None:
        """Queue an item, or return why not (OVERLOADED or DEADLINE). ``latency_s``: recent admission-to-result
        time, for the deadline check."""
        self.offered += 1
        if self.started_at is None:
            self.started_at = t
        wait = self.expected_wait_s(t, rate) if self.queue else 0.0
        why = None
        if self._shedding(wait):
            why = OVERLOADED
        elif deadline is not None and t + wait + latency_s > deadline:
            why = DEADLINE
        if why is not None:
            self.rejected[why] += 1
            return why
        if not self.queue:
            self.busy_since = t
        self.queue.append(Pending(key, t, deadline))
        self.with_deadline += deadline is not None
        return None

    def window(self, throughput_per_s: float, unloaded_latency_s: float, min_items: int) -> float:
        """How many items may be in flight: T·L with L = max(max_backlog_s, 2 x the unloaded latency)."""
        return max(float(min_items), throughput_per_s * max(self.max_backlog_s, 2.0 * unloaded_latency_s))

    def release(self, t: float, rate: float, backlog_s: float, in_flight: int = 0,
                window: float = float("inf")) -> tuple[list[Pending], list[Pending]]:
        """(items to admit now, items that expired in the queue)."""
        if self.last_t is not None:
            cap = max(MIN_BANKED_TOKENS, rate * self.burst_s)
            self.tokens = min(cap, self.tokens + max(0.0, t - self.last_t) * rate)
        self.last_t = t
        expired = self._expire(t) if self.with_deadline else []
        out: list[Pending] = []
        while (self.queue and self.tokens >= 1.0 - TOKEN_EPS and backlog_s < self.max_backlog_s
               and in_flight + len(out) < window):
            p = self.queue.popleft()
            self.with_deadline -= p.deadline is not None
            self.tokens -= 1.0
            self.released_at.append(t)
            out.append(p)
        self.released += len(out)
        self.cluster_full = backlog_s >= self.max_backlog_s or in_flight + len(out) >= window
        if not self.queue:
            self.busy_since = None
        return out, expired

    def _expire(self, t: float) -> list[Pending]:
        gone = [p for p in self.queue if p.deadline is not None and p.deadline <= t]
        if gone:
            self.queue = deque(p for p in self.queue if p.deadline is None or p.deadline > t)
            self.with_deadline -= len(gone)
            self.expired += len(gone)
        return gone

    def count_rejected(self, why: str, n: int = 1) -> None:
        """Offers refused before they reached the gate (the service's intake, or a stop): counted as offered and
        rejected here, so that the gate's counts hold every offer."""
        self.offered += n
        self.rejected[why] += n

    def take_all(self) -> list[Pending]:
        """Everything still queued (the service is stopping: each gets an answer)."""
        items, self.queue, self.with_deadline = list(self.queue), deque(), 0
        return items
