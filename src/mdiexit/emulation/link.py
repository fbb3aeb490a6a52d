"""Link emulation (DESIGN §7). Pure code: time is always an argument. (Device speed: emulation/device.py.)

A node keeps one :class:`LinkPacer` for its egress, shared by all its outgoing links (one uplink per device,
runtime/links.py). Before sending ``n`` bytes at time ``now`` it asks ``departure(n, now)``, waits until then,
and sends; the receiver sees the message ``latency_s`` later (``arrival``). ``queued_bytes(now)`` is what the
offloading rule needs as queued_bytes(n->m).

A link that changes over time (congested Wi-Fi) follows a ``schedule`` of (seconds from an origin, bit/s): once
:meth:`LinkPacer.start_schedule` names the origin, each change applies at its time, and what was queued before
it drains at the old rate until then and at the new one after. A sender that waits for a message's departure
should ask :meth:`LinkPacer.departure_of` again now and then: a message queued before a change leaves when the
queue ahead of it has drained at the rates in force, not when :meth:`LinkPacer.departure` first said.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DEFAULT_BURST_BYTES = 16 * 1024


def _unlimited(rate_bps: float | None) -> bool:
    return rate_bps is None or math.isinf(rate_bps)


@dataclass
class TokenBucket:
    """Byte pacing at ``rate_bps`` bit/s with up to ``burst_bytes`` sent back to back.

    Tokens (bytes) refill at rate_bps/8 per second up to ``burst_bytes``; a reservation may drive them
    negative, which is the backlog still to drain. A rate of None or inf means no pacing.
    """

    rate_bps: float | None
    burst_bytes: int = DEFAULT_BURST_BYTES
    tokens: float = field(init=False)
    last: float = field(init=False, default=-math.inf)

    def __post_init__(self) -> None:
        if not _unlimited(self.rate_bps) and not (self.rate_bps is not None and self.rate_bps > 0):
            raise ValueError(f"rate_bps: expected a positive number, None or inf, got {self.rate_bps!r}")
        if self.burst_bytes < 0:
            raise ValueError(f"burst_bytes: expected >= 0, got {self.burst_bytes!r}")
        self.tokens = float(self.burst_bytes)

    @property
    def bytes_per_s(self) -> float:
        return math.inf if _unlimited(self.rate_bps) else float(self.rate_bps) / 8.0  # type: ignore[operator]

    def _level(self, now: float) -> float:
        """Token level at ``now`` (without changing state)."""
        if self.last == -math.inf:
            return self.tokens
        return min(float(self.burst_bytes), self.tokens + max(0.0, now - self.last) * self.rate_bps / 8.0)

    def reserve(self, nbytes: int, now: float) -> float:
        """Reserve ``nbytes`` at ``now``; returns the time by which they have left the link (>= now)."""
        if nbytes < 0:
            raise ValueError(f"nbytes: expected >= 0, got {nbytes}")
        if _unlimited(self.rate_bps):
            return now
        self.tokens = self._level(now) - nbytes
        self.last = max(self.last, now)
        if self.tokens >= 0:
            return now
        return self.last + (-self.tokens) / self.bytes_per_s

    def backlog_bytes(self, now: float) -> float:
        """Bytes reserved but not yet drained at ``now``."""
        if _unlimited(self.rate_bps):
            return 0.0
        return max(0.0, -self._level(now))

    def set_rate(self, rate_bps: float | None, at: float) -> None:
        """Drain at ``rate_bps`` from ``at`` on (None or inf: no pacing)."""
        if not _unlimited(rate_bps) and not (rate_bps is not None and rate_bps > 0):
            raise ValueError(f"rate_bps: expected a positive number, None or inf, got {rate_bps!r}")
        if self.last != -math.inf and not _unlimited(self.rate_bps):
            at = max(at, self.last)
            self.tokens, self.last = self._level(at), at
        elif _unlimited(self.rate_bps):
            self.tokens, self.last = float(self.burst_bytes), -math.inf  # nothing was queued
        self.rate_bps = rate_bps


@dataclass
class LinkPacer:
    """One directed link (n->m): a token bucket at ``bandwidth_bps`` plus a fixed ``latency_s``."""

    bandwidth_bps: float | None
    latency_s: float = 0.0
    burst_bytes: int = DEFAULT_BURST_BYTES
    schedule: tuple[tuple[float, float | None], ...] = ()  # (seconds from the origin, bit/s), times increasing
    bytes_sent: int = field(init=False, default=0)
    bucket: TokenBucket = field(init=False)
    _pending: list[tuple[float, float | None]] = field(init=False, default_factory=list)  # absolute, in order

    def __post_init__(self) -> None:
        if not self.latency_s >= 0:
            raise ValueError(f"latency_s: expected >= 0, got {self.latency_s!r}")
        times = [t for t, _ in self.schedule]
        if times != sorted(set(times)):
            raise ValueError(f"schedule: times must increase, got {times}")
        self.bucket = TokenBucket(self.bandwidth_bps, self.burst_bytes)

    def start_schedule(self, origin: float) -> None:
        """The schedule's times count from ``origin`` (a later call starts it again from there)."""
        self._pending = [(origin + t, rate) for t, rate in self.schedule]

    def _advance(self, now: float) -> None:
        while self._pending and self._pending[0][0] <= now:
            at, rate = self._pending.pop(0)
            self.bucket.set_rate(rate, at)

    def rate_bps(self, now: float) -> float | None:
        """The link's rate at ``now`` (None: unlimited)."""
        self._advance(now)
        return None if _unlimited(self.bucket.rate_bps) else self.bucket.rate_bps

    def set_rate(self, rate_bps: float | None, now: float) -> None:
        """Change the rate now (a schedule's later entries still apply at their times)."""
        self._advance(now)
        self.bucket.set_rate(rate_bps, now)

    def departure(self, nbytes: int, now: float) -> float:
        """Reserve the link for ``nbytes``; returns when the send may go (the caller sleeps until then)."""
        self._advance(now)
        self.bytes_sent += nbytes
        return self.bucket.reserve(nbytes, now)

    def arrival(self, nbytes: int, now: float) -> float:
        """Reserve like :meth:`departure`, and return when the receiver should see the message."""
        return self.departure(nbytes, now) + self.latency_s

    def queued_bytes(self, now: float) -> int:
        """Bytes reserved on this link but not yet sent at ``now``."""
        self._advance(now)
        return int(math.ceil(self.bucket.backlog_bytes(now)))

    def departure_of(self, position: int, queued_at: float, now: float) -> float:
        """When the message that ends at byte ``position`` of this link (``bytes_sent`` after it was reserved, at
        ``queued_at``) leaves, at the current rate: in the past once it has."""
        self._advance(now)
        if _unlimited(self.bucket.rate_bps):
            return queued_at
        drained = self.bytes_sent - self.bucket.backlog_bytes(now)
        return max(queued_at, now + (position - drained) / self.bucket.bytes_per_s)

    def wait_s(self, now: float) -> float:
        """How long a message reserved now would wait for what is queued ahead of it."""
        self._advance(now)
        return self.bucket.backlog_bytes(now) / self.bucket.bytes_per_s
