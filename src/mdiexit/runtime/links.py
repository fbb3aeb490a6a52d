"""A node's outgoing side: one egress token bucket shared by all its links (one uplink per device, DESIGN §7),
and one PUSH socket per peer, owned by its own sender thread, authenticated with CurveZMQ unless insecure."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from mdiexit.clock import WallClock
from mdiexit.emulation.link import LinkPacer
from mdiexit.security import Identity, make_client

RECHECK_S = 0.05  # a message waiting for the egress re-reads its departure this often (the rate may change)


@dataclass
class Outgoing:
    frames: list
    queued_at: float
    position: int  # the egress's byte count after it
    leaves_at: float  # when it leaves the egress, as the bucket said when it was queued


class Egress:
    """A node's egress: one token bucket at its bandwidth, shared by all its outgoing links.

    Paced (``pace=True``), the bucket is the emulated uplink and follows the bandwidth ``schedule`` (bit/s from the
    run's start). Otherwise the kernel shapes the uplink and the bucket only models its queue, at the configured
    rate or, with measured links, the estimated one (:meth:`model_rate`)."""

    def __init__(self, bandwidth_bps: float | None, schedule: tuple[tuple[float, float], ...] = (),
                 pace: bool = True):
        self.pace = pace
        self.pacer = LinkPacer(bandwidth_bps, 0.0, schedule=schedule if pace else ())
        self.lock = threading.Lock()
        self.bytes_sent = 0

    def reserve(self, nbytes: int, t: float, then: Callable[[int, float], None] | None = None) -> float:
        """Time at which `nbytes` sent now have left the node. ``then(position, departure)`` runs under the egress
        lock, so that whatever it queues is in egress order; ``position`` is the egress's byte count after them."""
        with self.lock:
            self.bytes_sent += nbytes
            departure = self.pacer.departure(nbytes, t)
            if then is not None:
                then(self.bytes_sent, departure)
            return departure

    def queued_bytes(self, t: float) -> int:
        with self.lock:
            return self.pacer.queued_bytes(t)

    def departure_of(self, position: int, queued_at: float, t: float) -> float:
        """When the message ending at egress byte ``position`` leaves (paced; else when it was queued)."""
        if not self.pace:
            return queued_at
        with self.lock:
            return self.pacer.departure_of(position, queued_at, t)

    def rate_bps(self, t: float) -> float | None:
        """The egress's rate now, bit/s (None: unlimited)."""
        with self.lock:
            return self.pacer.rate_bps(t)

    def wait_s(self, t: float) -> float:
        """How long a message queued now waits for the bytes ahead of it."""
        with self.lock:
            return self.pacer.wait_s(t)

    def start_schedule(self, origin: float) -> None:
        with self.lock:
            self.pacer.start_schedule(origin)

    def model_rate(self, bps: float | None, t: float) -> None:
        """Unpaced only: drain the model of the kernel's queue at ``bps`` (an estimate)."""
        if not self.pace and bps is not None:
            with self.lock:
                if self.pacer.rate_bps(t) != bps:
                    self.pacer.set_rate(bps, t)


class Link:
    """One outgoing link: a PUSH socket owned by its own sender thread. Its bytes leave through the node's
    shared egress bucket, then wait out the link latency.

    With an unpaced egress (the kernel shapes the bandwidth, `--net namespaces`) sends only wait out the latency;
    the bucket still counts the bytes, so ``queued_bytes`` estimates what the kernel holds."""

    def __init__(self, ctx: zmq.Context, src: str, dst: str, address: str, egress: Egress, latency_s: float,
                 clock: WallClock, identity: Identity | None = None,
                 on_send: Callable[[str, int, int, float], None] | None = None):
        self.dst = dst
        self.clock = clock
        self.on_send = on_send  # (peer, bytes, egress position after them, time): the link meter
        self.egress = egress
        self.latency_s = latency_s
        self.q: queue.Queue[Outgoing | None] = queue.Queue()
        self.closing = False
        self.sock = ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 500)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)  # a restarted peer is found again within a second
        if identity is not None:
            make_client(self.sock, identity, dst)
        self.sock.connect(address)
        self.thread = threading.Thread(target=self._run, name=f"link-{src}->{dst}", daemon=True)
        self.thread.start()

    def send(self, frames: list, t: float) -> None:
        nbytes = sum(len(memoryview(f).cast("B")) for f in frames)

        def queue(position: int, departure: float) -> None:
            if self.on_send is not None:
                self.on_send(self.dst, nbytes, position, t)
            self.q.put(Outgoing(frames, t, position, departure))

        self.egress.reserve(nbytes, t, queue)

    def pending(self) -> int:
        return self.q.qsize()

    def _run(self) -> None:
        while True:
            out = self.q.get()
            if out is None:
                return
            now = self.clock.now
            departure = self.egress.departure_of(out.position, out.queued_at, now())
            if departure <= now():
                # It left while this thread sent what was ahead of it. The bucket only knows how much has drained
                # since, not when this one left: the time it gave when the message was queued is the right one.
                departure = min(departure, out.leaves_at)
            while departure > (t := now()):  # re-read while waiting: the rate may change (a schedule)
                if self.closing:
                    return
                self.clock.sleep(min(departure - t, RECHECK_S))
                departure = self.egress.departure_of(out.position, out.queued_at, now())
            if (delay := departure + self.latency_s - now()) > 0:  # it has left the egress: the latency remains
                self.clock.sleep(delay)
            # a PUSH socket blocks while its peer is away (down, or not started yet): wait, but wake for close()
            while not self.sock.poll(100, zmq.POLLOUT):
                if self.closing:
                    return
            self.sock.send_multipart(out.frames, copy=False)

    def close(self) -> None:
        self.q.put(None)
        self.thread.join(timeout=2)
        self.closing = True  # a thread still waiting for its peer gives up within 0.1 s
        self.thread.join(timeout=1)
        self.sock.close()
