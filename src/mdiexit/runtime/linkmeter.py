"""The measuring side of a node's links: the shell around :mod:`mdiexit.policies.linkestimate`.

As a sender, the node tells each link's estimator about every message it queues (with the egress position it got),
and feeds it the acknowledgements and echoed stamps that the peer's STATEs carry; a throughput sample found through
one link is of the egress they all share (one uplink per device), so every link of the node gets it. As a receiver,
it counts the bytes each peer sent it and remembers each peer's last STATE stamp, and puts them in its own STATE to
that peer (``State.ack``). With ``links: measured`` the estimates replace the configured figures in the offloading
rule's views (and, when the kernel shapes the links, the rate at which the egress model drains); with ``links:
configured`` they are measured and reported only.

One thread owns a meter: the node's loop (runtime.loop), which queues every send (:meth:`LinkMeter.on_send` runs
inside the egress's reservation, on the sending thread) and reads every STATE.
"""

from __future__ import annotations

from collections import Counter

import msgspec

from mdiexit.policies.linkestimate import LinkEstimator
from mdiexit.policies.offload import NeighbourView
from mdiexit.protocol.codec import encode
from mdiexit.protocol.messages import LinkFigures, State

_NO_ACK_BYTES = len(msgspec.msgpack.encode({"ack": None})) - len(msgspec.msgpack.encode({}))
ACK_EVERY = 3  # STATEs per acknowledgement: about 7 a second at 50 ms heartbeats, under 1 % of the bytes sent


class LinkMeter:
    """Per-peer link estimates of one node, and the acknowledgements it owes its peers."""

    def __init__(self, measured: bool):
        self.measured = measured  # the estimates drive the offloading rule (links: measured)
        self.estimators: dict[str, LinkEstimator] = {}
        self.bytes_to: Counter[str] = Counter()
        self.received: dict[str, tuple[int, float]] = {}  # peer -> (bytes received from it, when the last arrived)
        self.echo: dict[str, tuple[float, float]] = {}  # peer -> (its last STATE's sent_at, when that arrived)
        self.overhead_bytes = 0  # header bytes that acknowledgements added to this node's STATEs
        self._states = 0

    def add_peer(self, peer: str, seed_bps: float | None, seed_latency_s: float | None) -> None:
        self.estimators.setdefault(peer, LinkEstimator(seed_bps, seed_latency_s))

    # ---------------------------------------------------------------- as a sender
    def on_send(self, peer: str, nbytes: int, position: int, t: float) -> None:
        """A message to ``peer`` was queued at ``t``; ``position`` is the egress's byte count after it."""
        self.bytes_to[peer] += nbytes
        if (est := self.estimators.get(peer)) is not None:
            est.on_send(nbytes, position, t)

    def on_state(self, msg: State, t: float) -> None:
        """A STATE from a peer arrived at ``t``: its acknowledgement of our link to it, and a stamp to echo."""
        self.echo[msg.sender] = (msg.sent_at, t)
        est = self.estimators.get(msg.sender)
        if est is None or msg.ack is None:
            return
        received, age_s, echoed_at, held_s = msg.ack
        est.on_rtt(t - echoed_at - held_s, t)  # our own stamp, so only our clock is read
        for bps, lower_bound in est.on_ack(received, age_s, msg.sent_at, t):
            for other in self.estimators.values():  # a sample is of the egress that every link shares
                if other is not est:
                    other.on_sample(bps, t, lower_bound)

    # ---------------------------------------------------------------- as a receiver
    def on_receive(self, peer: str, nbytes: int, t: float) -> None:
        total, _ = self.received.get(peer, (0, t))
        self.received[peer] = (total + nbytes, t)

    def state_frames(self, msg: State, peers: list[str]) -> dict[str, list]:
        """The frames of ``msg`` for each peer, each with its own acknowledgement (``msg.sent_at``: when it leaves)."""
        leaves = msg.sent_at
        self._states += 1
        due = self._states % ACK_EVERY == 0 or msg.stats  # and in the final STATE
        acks = {p: (self.received[p][0], max(0.0, leaves - self.received[p][1]), self.echo[p][0],
                    max(0.0, leaves - self.echo[p][1]))
                for p in peers if due and p in self.received and p in self.echo}
        plain = encode(msg)
        out = {}
        for p in peers:
            if p not in acks:
                out[p] = plain
                continue
            out[p] = encode(msgspec.structs.replace(msg, ack=acks[p]))
            self.overhead_bytes += len(out[p][0]) - len(plain[0]) + _NO_ACK_BYTES
        return out

    # ---------------------------------------------------------------- estimates
    def apply(self, views: dict[str, NeighbourView], t: float) -> float | None:
        """Put the current estimates into the offloading rule's views (links: measured). Returns the egress's
        estimated rate (the best measured link's), or None when none is measured."""
        if not self.measured:
            return None
        for peer, view in views.items():
            if (est := self.estimators.get(peer)) is not None:
                view.bandwidth_bps = est.bandwidth_bps(t)
                lat = est.latency_s()
                view.latency_s = view.latency_s if lat is None else lat
        rates = [e.bandwidth_bps(t) for e in self.estimators.values() if e.measured]
        return max(rates) if rates else None

    def figures(self, t: float) -> dict[str, LinkFigures]:
        """Per peer: (estimated bit/s, 0 when unknown; latency in s; bytes sent), for the run summary."""
        return {p: (e.bandwidth_bps(t) or 0.0, e.latency_s() or 0.0, self.bytes_to[p])
                for p, e in self.estimators.items()}

    def status(self, t: float) -> str:
        """Estimates for the live view, e.g. ``w1:19.6Mb/4ms w2:?/4ms``."""
        return " ".join(f"{p}:{bw / 1e6:.1f}Mb/{lat * 1000:.0f}ms" if bw else f"{p}:?/{lat * 1000:.0f}ms"
                        for p, (bw, lat, _) in sorted(self.figures(t).items()))
