"""A node's outgoing side: one egress token bucket shared by all its links (one uplink per device, DESIGN §7),
and one PUSH socket per peer, authenticated with CurveZMQ unless insecure. Both belong to the node's loop: a
message is sent from the loop's thread when the emulated egress and latency let it leave (a timer of the loop)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import zmq

from mdiexit.emulation.link import LinkPacer
from mdiexit.runtime.loop import Loop
from mdiexit.security import Identity, make_client

RECHECK_S = 0.05  # a message waiting for the egress re-reads its departure this often (the rate may change)
AWAY_RECHECK_S = 0.1  # a message to a peer that is away is tried again this often


@dataclass
class Outgoing:
    frames: list
    queued_at: float
    position: int  # the egress's byte count after it
    leaves_at: float  # when it leaves the egress, as the bucket said when it was queued


class Egress:
    """A node's egress: one token bucket at its bandwidth, shared by all its outgoing links (on the node's loop).

    Paced (``pace=True``), the bucket is the emulated uplink and follows the bandwidth ``schedule`` (bit/s from the
    run's start). Otherwise the kernel shapes the uplink and the bucket only models its queue, at the configured
    rate or, with measured links, the estimated one (:meth:`model_rate`)."""

    def __init__(self, bandwidth_bps: float | None, schedule: tuple[tuple[float, float], ...] = (),
                 pace: bool = True):
        self.pace = pace
        self.pacer = LinkPacer(bandwidth_bps, 0.0, schedule=schedule if pace else ())

    @property
    def bytes_sent(self) -> int:
        return self.pacer.bytes_sent

    def reserve(self, nbytes: int, t: float) -> tuple[int, float]:
        """`nbytes` sent at ``t``: the egress's byte count after them, and the time they have left the node."""
        departure = self.pacer.departure(nbytes, t)
        return self.pacer.bytes_sent, departure

    def queued_bytes(self, t: float) -> int:
        return self.pacer.queued_bytes(t)

    def departure_of(self, position: int, queued_at: float, t: float) -> float:
        """When the message ending at egress byte ``position`` leaves (paced; else when it was queued)."""
        return self.pacer.departure_of(position, queued_at, t) if self.pace else queued_at

    def rate_bps(self, t: float) -> float | None:
        """The egress's rate now, bit/s (None: unlimited)."""
        return self.pacer.rate_bps(t)

    def wait_s(self, t: float) -> float:
        """How long a message queued now waits for the bytes ahead of it."""
        return self.pacer.wait_s(t)

    def start_schedule(self, origin: float) -> None:
        self.pacer.start_schedule(origin)

    def model_rate(self, bps: float | None, t: float) -> None:
        """Unpaced only: drain the model of the kernel's queue at ``bps`` (an estimate)."""
        if not self.pace and bps is not None and self.pacer.rate_bps(t) != bps:
            self.pacer.set_rate(bps, t)


class Link:
    """One outgoing link: a PUSH socket that only the node's loop writes to. Its bytes leave through the node's
    shared egress bucket, then wait out the link latency. A message waits in order in ``waiting`` for a timer of
    the loop, which sends whatever is due: no thread of its own, so a message costs no hand-off between threads.

    With an unpaced egress (the kernel shapes the bandwidth, `--net namespaces`) sends only wait out the latency;
    the bucket still counts the bytes, so ``queued_bytes`` estimates what the kernel holds."""

    def __init__(self, ctx: zmq.Context, dst: str, address: str, egress: Egress, latency_s: float, loop: Loop,
                 identity: Identity | None = None, on_send: Callable[[str, int, int, float], None] | None = None):
        self.dst = dst
        self.loop = loop
        self.clock = loop.clock
        self.on_send = on_send  # (peer, bytes, egress position after them, time): the link meter
        self.egress = egress
        self.latency_s = latency_s
        self.waiting: deque[Outgoing] = deque()
        self.timer_at: float | None = None  # when the loop will look at ``waiting`` again (None: no timer set)
        self.sock = ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 500)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)  # a restarted peer is found again within a second
        if identity is not None:
            make_client(self.sock, identity, dst)
        self.sock.connect(address)

    def send(self, frames: list, t: float) -> None:
        """Queue ``frames`` for the peer (on the loop); they leave when the egress and the latency allow."""
        nbytes = sum(memoryview(f).nbytes for f in frames)
        position, departure = self.egress.reserve(nbytes, t)
        if self.on_send is not None:
            self.on_send(self.dst, nbytes, position, t)
        self.waiting.append(Outgoing(frames, t, position, departure))
        if len(self.waiting) == 1:
            self.flush()

    def pending(self) -> int:
        return len(self.waiting)

    def flush(self) -> None:
        """Send what is due, in order; set a timer for the rest."""
        now = self.clock.now()
        while self.waiting:
            out = self.waiting[0]
            departure = self.egress.departure_of(out.position, out.queued_at, now)
            if departure <= now:
                # It has left. The bucket only knows how much has drained since, not when this one left: the time
                # it gave when the message was queued is the right one.
                departure = min(departure, out.leaves_at)
            elif departure - now > RECHECK_S:  # still in the egress: look again soon, the rate may change
                return self._wake_at(now + RECHECK_S)
            if (due := departure + self.latency_s) > now + self.loop.early_s:
                return self._wake_at(due)
            try:
                self.sock.send_multipart(out.frames, copy=False, flags=zmq.NOBLOCK)
            except zmq.Again:  # the peer is away (down, or not started yet): try again later
                return self._wake_at(now + AWAY_RECHECK_S)
            self.waiting.popleft()

    def _wake_at(self, t: float) -> None:
        if self.timer_at is None or t < self.timer_at:
            self.timer_at = t
            self.loop.at(t, partial(self._on_timer, t))

    def _on_timer(self, t: float) -> None:
        if self.timer_at == t:  # else a later flush set an earlier timer, which has run
            self.timer_at = None
            self.flush()

    def close(self) -> None:
        """Once the loop has stopped: what is still waiting leaves now (a final STATE), within the linger."""
        for out in self.waiting:
            try:
                self.sock.send_multipart(out.frames, copy=False, flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                break  # the peer is away: the rest would not reach it either
        self.waiting.clear()
        self.sock.close()
