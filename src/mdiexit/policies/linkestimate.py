"""Online estimate of one outgoing link's throughput and latency (DESIGN §3.2, §7). Pure code: no clock, no
threads, no I/O; time is always an argument.

What the sender knows. It numbers the bytes it hands to its egress, which all its links share (one uplink per
device): a message's ``position`` is the egress's byte count after it. Its receiver reports, in each STATE to
the sender, how many bytes it has received from it and how long before that STATE left the last of them arrived,
and echoes the sender's last STATE stamp with how long it held it. Clocks are never assumed to agree: rates are
differences within the receiver's clock, a round trip starts and ends on the sender's, and where a delivery must
be placed on the sender's clock, the offset between the two clocks is bounded from both sides (below: no message
arrives before it was queued; above: no STATE arrives before it was stamped) and the bound that errs on the safe
side is used.

Throughput. An acknowledged message maps to an egress position and a delivery time in the receiver's clock.
Between two acknowledged messages a and b on one link, the egress drained ``position_b - position_a`` bytes (to
every peer, in order) in ``delivered_b - delivered_a`` seconds. That is the link's rate only if the queue never
emptied in between: the step is *busy* when b was already queued when a was delivered (at the earliest that
delivery can have been on the sender's clock, so a late acknowledgement never fakes one), with a margin of one
round trip (at least ``busy_margin_s``): a receiver that stalls stamps deliveries late, and a queue shorter than
a round trip cannot be told from that. Busy steps are joined
until they span ``min_span_s`` and ``min_bytes``; then ``sample = 8 * bytes / seconds``. An idle link yields no
samples, so idleness never decays the estimate. Because positions count every peer's bytes, a congested uplink
is measured through every link that shares it, whichever one carries the traffic; a driver may therefore hand
each sample to the node's other links too (:meth:`LinkEstimator.on_sample`), which then follow a change sooner.

A second kind of evidence is a lower bound: a message of at least ``min_bound_bytes`` delivered at most ``d``
seconds after it was queued proves a rate of at least ``8 * bytes / d``. Its transit is known only from above
(the clock offset is bounded through a STATE's own transit), and that bound holds both paths' delay, so ``d`` is
that bound less the smallest round trip ever seen: the message's wait and wire time, or more. (Not the smallest
of the recent ones: where the sender's STATEs wait behind its data unseen, in a kernel-shaped uplink, every recent
round trip holds that wait while it is backlogged.) The time is then stretched by how far a stamp may be off (the
round trips' spread, at least ``min_bound_slack_s``): a 2 KB message takes under a millisecond of wire at 20
Mbit/s, so a stamp half a millisecond early would credit the link with twice its rate, and the estimate would
creep up on such bounds and stay there. It only ever raises the
estimate, so a link that got faster while it was lightly used is noticed without a backlog, even from the small
messages (learned codes) that cross it when it is avoided.

Smoothing. ``estimate += alpha * (sample - estimate)`` (EWMA). Outlier guard: a sample more than
``outlier_ratio`` times away from the estimate is held, and applied only if the next sample is also out on the
same side. Then the estimate restarts at the smaller of the two, the side that errs safe: after a drop the
lower one is the newer rate (the first sample spans the change), and after a recovery the first samples are the
wildest (a queue built at the old rate leaves in a burst; their geometric mean once put a 2 -> 20 Mbit/s
recovery at 31 for 3 s), while a rate believed too low only costs offloading until the next samples or a probe
raise it. A real step is followed within two samples, a lone outlier is ignored.

Probing. Without new evidence for ``probe_after_s``, the estimate grows by ``probe_gain_per_s`` per second, up to
the best rate seen (or the seed), so a link that was congested and then avoided gets tried again; if it is still
slow, the first busy samples bring the estimate back.

Latency. One-way latency = half the smallest round trip among the last ``latency_window`` ones (queueing only
ever adds delay, so the minimum is the path's own), smoothed by the same EWMA.

Fallback. Before its first sample a link has its seed (the configured figure) or, without one, no estimate
(None: the offloading rule treats it as unlimited). A link that never acknowledges keeps that, and nothing it
has sent accumulates anywhere, so it never blocks offloading.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class EstimatorConfig:
    """Constants of :class:`LinkEstimator` (module docstring)."""

    alpha: float = 0.3
    outlier_ratio: float = 3.0
    min_span_s: float = 0.25
    min_bytes: int = 8 * 1024
    min_bound_bytes: int = 2 * 1024
    min_bound_wire_s: float = 0.0005  # a lower bound needs at least this much wire time: clock noise is smaller
    min_bound_slack_s: float = 0.0005  # added to a lower bound's time, at least (module docstring)
    busy_margin_s: float = 0.02
    probe_after_s: float = 2.0
    probe_gain_per_s: float = 0.5
    latency_window: int = 20  # round trips: about 1 s of heartbeats
    max_unacked: int = 4096  # messages remembered while awaiting their ack (a link that never acks forgets)

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha: expected a number in (0, 1], got {self.alpha!r}")
        if not self.outlier_ratio > 1:
            raise ValueError(f"outlier_ratio: expected a number > 1, got {self.outlier_ratio!r}")


@dataclass(frozen=True)
class _Sent:
    link_bytes: int  # this link's byte count after the message
    position: int  # the egress's byte count after it
    queued_at: float
    nbytes: int


@dataclass(frozen=True)
class _Delivered:
    position: int
    at_peer: float  # delivery time, receiver's clock


@dataclass
class LinkEstimator:
    """Throughput (bit/s) and latency (s) of one outgoing link, learnt from acknowledgements (module docstring)."""

    seed_bps: float | None = None
    seed_latency_s: float | None = None
    cfg: EstimatorConfig = field(default_factory=EstimatorConfig)
    samples: int = field(init=False, default=0)  # throughput samples applied
    rtts: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.seed_bps is not None and not (self.seed_bps > 0 and math.isfinite(self.seed_bps)):
            self.seed_bps = None  # unlimited or nonsense: no seed
        self._bps = self.seed_bps
        self._latency = self.seed_latency_s
        self._peak = self.seed_bps
        self._evidence_at: float | None = None  # last applied sample; None before the first
        self._held: float | None = None  # an outlier awaiting confirmation
        self._unacked: deque[_Sent] = deque()
        self._sent = 0
        self._acked = 0
        self._shift: int | None = None  # receiver's count - ours (restarts on either side shift it)
        self._prev: _Delivered | None = None
        self._anchor: _Delivered | None = None  # start of the current busy stretch
        self._offset_lo = -math.inf  # bounds on (sender's clock - receiver's clock)
        self._offset_hi = math.inf
        self._rtt_window: deque[float] = deque(maxlen=self.cfg.latency_window)
        self._base_rtt = math.inf  # the smallest round trip ever: the path's own, with no queue on either side

    # ---------------------------------------------------------------- estimates
    def bandwidth_bps(self, now: float) -> float | None:
        """The current throughput estimate in bit/s, or None when unknown."""
        if self._bps is None or self._evidence_at is None:
            return self._bps
        idle = now - self._evidence_at - self.cfg.probe_after_s
        if idle <= 0 or self._peak is None or self._bps >= self._peak:
            return self._bps
        return min(self._peak, self._bps * (1.0 + self.cfg.probe_gain_per_s) ** idle)

    def latency_s(self) -> float | None:
        """The current one-way latency estimate in seconds, or None when unknown."""
        return self._latency

    @property
    def measured(self) -> bool:
        """At least one throughput sample has been applied."""
        return self._evidence_at is not None

    # ---------------------------------------------------------------- events
    def on_send(self, nbytes: int, position: int, now: float) -> None:
        """The sender queued a message of ``nbytes`` on this link; ``position`` is its egress's byte count after it."""
        self._sent += nbytes
        self._unacked.append(_Sent(self._sent, position, now, nbytes))
        while len(self._unacked) > self.cfg.max_unacked:
            self._unacked.popleft()

    def on_sample(self, bps: float, now: float, lower_bound: bool = False) -> None:
        """Evidence about the shared egress found through another link: a rate sample, or a lower bound."""
        est = self.bandwidth_bps(now)
        if bps > 0 and math.isfinite(bps) and not (lower_bound and (est is None or bps <= est)):
            self._apply(bps, now)

    def on_ack(self, received_bytes: int, age_s: float, peer_sent_at: float, now: float) -> list[tuple[float, bool]]:
        """The receiver's STATE arrived ``now``: it had received ``received_bytes`` from us in all, the last of them
        ``age_s`` before its STATE left it at ``peer_sent_at`` (its clock). Returns the evidence it gave about the
        egress: (bit/s, whether a lower bound), for :meth:`on_sample` of the node's other links."""
        evidence: list[tuple[float, bool]] = []
        if not (math.isfinite(age_s) and math.isfinite(peer_sent_at)) or age_s < 0:
            return evidence
        if self._shift is None:  # first ack: more than we sent means we restarted and the receiver did not
            self._shift = max(0, received_bytes - self._sent)
        acked = received_bytes - self._shift
        if acked < self._acked or acked > self._sent:
            # the counts disagree (one side restarted): align them, forget what is in flight, start over
            self._shift = received_bytes - self._sent
            self._acked = self._sent
            self._unacked.clear()
            self._prev = self._anchor = None
            self._offset_lo, self._offset_hi = -math.inf, math.inf  # it may be another clock now
            return evidence
        self._acked = acked
        self._offset_hi = min(self._offset_hi, now - peer_sent_at)
        last: _Sent | None = None
        while self._unacked and self._unacked[0].link_bytes <= acked:
            last = self._unacked.popleft()
        if last is None:
            return evidence  # nothing new delivered
        d = _Delivered(last.position, peer_sent_at - age_s)
        self._offset_lo = max(self._offset_lo, last.queued_at - d.at_peer)
        # At most its transit: wait + wire + the path's delay, plus the reverse delay that bounds the clock offset.
        # Less the smallest round trip (both paths' delay), what remains is at most its wait and wire time.
        wire = d.at_peer + self._offset_hi - last.queued_at - (self._base_rtt if self._rtt_window else 0.0)
        if last.nbytes >= self.cfg.min_bound_bytes and wire >= self.cfg.min_bound_wire_s:
            bound = 8.0 * last.nbytes / (wire + self._stamp_slack_s())
            est = self.bandwidth_bps(now)
            if est is not None and bound > est:
                self._apply(bound, now)
                evidence.append((bound, True))
        prev, self._prev = self._prev, d
        margin = max(self.cfg.busy_margin_s, 2 * (self._latency or 0.0))
        if prev is None or last.queued_at + margin > prev.at_peer + self._offset_lo:
            self._anchor = None  # the queue may have emptied since prev: not a measurement of the rate
            return evidence
        anchor = self._anchor or prev
        span, nbytes = d.at_peer - anchor.at_peer, d.position - anchor.position
        if span >= self.cfg.min_span_s and nbytes >= self.cfg.min_bytes:
            self._apply(8.0 * nbytes / span, now)
            evidence.append((8.0 * nbytes / span, False))
            anchor = d
        self._anchor = anchor
        return evidence

    def on_rtt(self, rtt_s: float, now: float) -> None:
        """A round trip measured on the sender's clock (echoed stamp, minus the receiver's holding time)."""
        if not (math.isfinite(rtt_s) and rtt_s >= 0):
            return
        self._rtt_window.append(rtt_s)
        self._base_rtt = min(self._base_rtt, rtt_s)
        one_way = min(self._rtt_window) / 2
        self._latency = one_way if self.rtts == 0 or self._latency is None \
            else self._latency + self.cfg.alpha * (one_way - self._latency)
        self.rtts += 1

    def _stamp_slack_s(self) -> float:
        """How far a delivery time may be off: the round trips' spread (median less minimum), at least the floor."""
        spread = statistics.median(self._rtt_window) - min(self._rtt_window) if self._rtt_window else 0.0
        return max(self.cfg.min_bound_slack_s, spread)

    # ---------------------------------------------------------------- smoothing
    def _apply(self, x: float, now: float) -> None:
        est = self.bandwidth_bps(now)
        if est is None:
            new = x
        elif 1 / self.cfg.outlier_ratio <= x / est <= self.cfg.outlier_ratio:
            new = est + self.cfg.alpha * (x - est)
            self._held = None
        elif self._held is not None and (self._held > est) == (x > est):
            new = min(self._held, x)  # confirmed: the link changed; restart on the safe side
            self._held = None
        else:
            self._held = x
            return
        self._bps = new
        self._peak = new if self._peak is None else max(self._peak, new)
        self._evidence_at = now
        self.samples += 1
