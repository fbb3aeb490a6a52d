"""The source's ledger (DESIGN §9): every admitted item, with its input, until its one outcome. Pure
bookkeeping, time passed in; one thread (the source's loop, runtime.loop) owns it.

An admitted item ends in exactly one of: result, expired (its deadline passed first) or failed (with a
reason); rejection happens before admission, at the gate (policies.gate). It is dispatched once per attempt;
the first result of any attempt is delivered, later ones are counted as redundant and dropped, so results
are exactly-once. Memory per in-flight item: one Record (about 300 bytes) plus a reference to its input (the
stream's own array: no copy). A service that runs for days keeps no settled records (``keep_records``
False): the shell takes each outcome (``take_settled``) and the counters stay.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from itertools import islice
from operator import itemgetter
from typing import Any

import numpy as np

MAX_ATTEMPTS = 4  # dispatches of one item before it is failed
# the recent latency percentiles are of the last this many results at most: at 10,000 items/s, sorting the whole
# window at every control step was the source's largest cost (docs/bench/overhead.md)
LATENCY_SAMPLE = 1000


def percentile(ordered: list[float], q: float) -> float:
    """The q-th percentile of a sorted, non-empty list, interpolated as numpy's default ('linear') does: a
    control step asks three of them, and numpy's per-call cost is most of the work."""
    at = q / 100 * (len(ordered) - 1)
    lo = int(at)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (at - lo)


_LATENCY = itemgetter(2)  # of an entry of Ledger.recent: (time, correct, latency)


@dataclass
class Record:
    admitted_at: float
    truth: int
    x: np.ndarray | None = None  # the input, kept until the outcome (None once done)
    thresholds: tuple[float, ...] = ()
    thresholds_version: int = 0
    attempt: int = 0
    dispatched_at: float = 0.0
    done_at: float | None = None  # when its result arrived
    label: int = -1
    exit: int = 0
    confidence: float = 0.0
    node: str = ""
    failed: str = ""  # the reason, when the item failed
    deadline: float | None = None  # absolute, in the source's clock
    expired: bool = False
    key: Any = None  # whoever offered the item: to answer it
    package: str = ""  # the package version it runs on (NAME@HASH)

    @property
    def outcome(self) -> str:
        return "failed" if self.failed else "expired" if self.expired else "result" if self.done_at else ""


@dataclass
class Ledger:
    """Every admitted item until its outcome. Counts duplicates, redundant (other attempts) and unknown results."""

    records: dict[int, Record] = field(default_factory=dict)
    in_flight: dict[int, Record] = field(default_factory=dict)
    keep_records: bool = True  # False: a settled item's record goes once the shell took it (take_settled)
    admitted: int = 0
    completed: int = 0
    failed: int = 0
    expired: int = 0
    correct: int = 0  # completed with the true label
    exit_counts: Counter = field(default_factory=Counter)
    by_package: Counter = field(default_factory=Counter)  # results by the package version that answered
    settled_ids: deque = field(default_factory=deque)  # items settled since the shell last took them
    duplicates: int = 0  # the same attempt's result twice: never delivered
    redundant: int = 0  # a result of another attempt after the item's outcome: dropped
    redispatched: int = 0
    unknown: int = 0
    recent: deque = field(default_factory=deque)  # (done_at, correct, latency_s) of the last completions
    recent_correct: int = 0  # how many of them are correct (kept with the deque: window() is O(1) per result)
    _sorted: list[float] = field(default_factory=list, init=False, repr=False)  # recent latencies, sorted
    _sorted_key: tuple | None = field(default=None, init=False, repr=False)  # the window they were sorted for

    def admit(self, item_id: int, t: float, truth: int, x: np.ndarray | None = None,
              thresholds: tuple[float, ...] = (), version: int = 0, deadline: float | None = None,
              key: Any = None, package: str = "") -> None:
        r = Record(t, truth, x, thresholds, version, dispatched_at=t, deadline=deadline, key=key, package=package)
        self.records[item_id] = r
        self.in_flight[item_id] = r
        self.admitted += 1

    def _settle(self, item_id: int) -> None:
        del self.in_flight[item_id]
        self.settled_ids.append(item_id)

    def take_settled(self) -> list[tuple[int, Record]]:
        """The items settled since the last call, with their records (dropped here unless keep_records)."""
        ids, self.settled_ids = self.settled_ids, deque()
        out = [(i, self.records[i]) for i in ids if i in self.records]
        if not self.keep_records:
            for i in ids:
                self.records.pop(i, None)
        return out

    def expects(self, item_id: int) -> bool:
        """A result for this item would be legitimate: it was admitted (in flight, or redundant after a retry)."""
        r = self.records.get(item_id)
        if r is None:  # ids run 0, 1, ...: a settled record may be gone already
            return not self.keep_records and 0 <= item_id < self.admitted
        return r.done_at is None or r.attempt > 0

    def complete(self, item_id: int, label: int, exit_: int, conf: float, node: str, t: float,
                 attempt: int = 0) -> bool:
        """Record a result; True when it is the item's outcome (delivered), False when dropped."""
        r = self.records.get(item_id)
        if r is None:
            if not self.keep_records and 0 <= item_id < self.admitted:
                self.redundant += 1  # a late result of an item settled (and forgotten) already
            else:
                self.unknown += 1
            return False
        if r.done_at is not None or r.failed or r.expired:
            if r.failed or r.expired or attempt != r.attempt or r.attempt > 0:  # no result was delivered
                self.redundant += 1
            else:
                self.duplicates += 1
            return False
        if r.deadline is not None and t > r.deadline:
            self._expire(r, t)  # too late to be of use
            self._settle(item_id)
            return False
        r.done_at, r.label, r.exit, r.confidence, r.node, r.x = t, label, exit_, conf, node, None
        self._settle(item_id)
        self.completed += 1
        self.correct += label == r.truth
        self.exit_counts[exit_] += 1
        self.by_package[r.package] += 1
        self.recent.append((t, label == r.truth, t - r.admitted_at))
        self.recent_correct += label == r.truth
        return True

    def _expire(self, r: Record, t: float) -> None:
        r.expired, r.x = True, None
        self.expired += 1

    def expire(self, item_id: int, t: float) -> bool:
        """Settle an in-flight item as expired (its deadline passed, or a node dropped it for that)."""
        r = self.in_flight.get(item_id)
        if r is None:
            return False
        self._expire(r, t)
        self._settle(item_id)
        return True

    def past_deadline(self, t: float) -> list[int]:
        return [i for i, r in self.in_flight.items() if r.deadline is not None and r.deadline < t]

    def fail(self, item_id: int, why: str) -> bool:
        r = self.in_flight.get(item_id)
        if r is None:
            return False
        r.failed, r.x = why, None
        self._settle(item_id)
        self.failed += 1
        return True

    def retry(self, item_id: int, t: float, why: str) -> Record | None:
        """A new attempt of an in-flight item, or None after failing it (too many attempts) or if it is done."""
        r = self.in_flight.get(item_id)
        if r is None:
            return None
        if r.attempt + 1 >= MAX_ATTEMPTS:
            r.failed, r.x = f"no result after {MAX_ATTEMPTS} attempts (last: {why})", None
            self._settle(item_id)
            self.failed += 1
            return None
        r.attempt += 1
        r.dispatched_at = t
        self.redispatched += 1
        return r

    def overdue(self, t: float, after_s: float) -> list[int]:
        return [i for i, r in self.in_flight.items() if t - r.dispatched_at > after_s]

    def in_flight_ids(self) -> list[int]:
        return list(self.in_flight)

    def window(self, t: float, span_s: float) -> tuple[float, float]:
        """(throughput per s, accuracy) of the results completed in the last `span_s` seconds."""
        while self.recent and self.recent[0][0] < t - span_s:
            self.recent_correct -= self.recent.popleft()[1]
        n = len(self.recent)
        correct = self.recent_correct
        return n / span_s, (correct / n if n else float("nan"))

    def recent_latency_s(self, q: float = 95) -> float:
        """The q-th percentile of the recent results' latencies, of the last LATENCY_SAMPLE at most (0 when there
        are none)."""
        if not self.recent:
            return 0.0
        key = (len(self.recent), self.recent[0][0], self.recent[-1][0])
        if self._sorted_key != key:  # a control step asks several percentiles of one window: sort it once
            self._sorted = sorted(map(_LATENCY, islice(reversed(self.recent), LATENCY_SAMPLE)))
            self._sorted_key = key
        return percentile(self._sorted, q)

    @property
    def settled(self) -> int:
        """Items with an outcome (result, expired or failed)."""
        return self.completed + self.failed + self.expired

    @classmethod
    def combined(cls, ledgers: dict[str, Ledger]) -> Ledger:
        """The site's ledger: every source's records, keyed (source, item id), and their counters summed. For
        reading only (a summary), never for admitting into."""
        total = cls(keep_records=all(led.keep_records for led in ledgers.values()))
        for source, led in ledgers.items():
            total.records.update(((source, i), r) for i, r in led.records.items())
            total.exit_counts.update(led.exit_counts)
            total.by_package.update(led.by_package)
            for counter in ("admitted", "completed", "failed", "expired", "correct", "duplicates", "redundant",
                            "redispatched", "unknown"):
                setattr(total, counter, getattr(total, counter) + getattr(led, counter))
        return total

