"""A node's outgoing side: one egress token bucket shared by all its links (one uplink per device, DESIGN §7),
and one PUSH socket per peer, owned by its own sender thread, authenticated with CurveZMQ unless insecure."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

import zmq

from mdiexit.emulation.link import LinkPacer
from mdiexit.security import Identity, make_client


def now() -> float:
    return time.monotonic()


@dataclass
class Outgoing:
    frames: list
    send_at: float  # departure from the token bucket + link latency


class Egress:
    """A node's egress: one token bucket at its bandwidth, shared by all its outgoing links."""

    def __init__(self, bandwidth_bps: float | None):
        self.pacer = LinkPacer(bandwidth_bps, 0.0)
        self.lock = threading.Lock()
        self.bytes_sent = 0

    def reserve(self, nbytes: int, t: float) -> float:
        """Time at which `nbytes` sent now have left the node."""
        with self.lock:
            self.bytes_sent += nbytes
            return self.pacer.departure(nbytes, t)

    def queued_bytes(self, t: float) -> int:
        with self.lock:
            return self.pacer.queued_bytes(t)


class Link:
    """One outgoing link: a PUSH socket owned by its own sender thread. Its bytes leave through the node's
    shared egress bucket, then wait out the link latency.

    With ``pace_bandwidth=False`` (the kernel shapes the bandwidth, `--net namespaces`) sends only wait out the
    latency; the bucket still counts the bytes, so ``queued_bytes`` estimates what the kernel holds."""

    def __init__(self, ctx: zmq.Context, src: str, dst: str, address: str, egress: Egress, latency_s: float,
                 pace_bandwidth: bool = True, identity: Identity | None = None):
        self.dst = dst
        self.egress = egress
        self.latency_s = latency_s
        self.pace_bandwidth = pace_bandwidth
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
        departure = self.egress.reserve(nbytes, t)
        self.q.put(Outgoing(frames, (departure if self.pace_bandwidth else t) + self.latency_s))

    def pending(self) -> int:
        return self.q.qsize()

    def _run(self) -> None:
        while True:
            out = self.q.get()
            if out is None:
                return
            delay = out.send_at - now()
            if delay > 0:
                time.sleep(delay)
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
