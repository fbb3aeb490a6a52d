"""The source's client endpoint (`mdiexit serve`, DESIGN §10): applications send live inputs and get each
request's one outcome back.

One ROUTER socket on the source's ``client_port``, a CurveZMQ server admitting only client keys
(KEYS_DIR/clients/, ZAP domain ``clients``). Its thread owns the socket: it answers HELLO with INFO, checks
every REQUEST (decodable, within the size limit, the served package's version, a uint8 array of the
package's input shape) and hands good ones to the source's loop as offers. A bad request gets an ``error``
REPLY naming the fix, to that client only; the service goes on for everyone else. Replies come from the
source's loop (runtime.loop), the one thread that answers, and reach the socket's thread through an inproc
PUSH/PULL pair, so neither socket is shared.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
import zmq

from mdiexit.package import Package
from mdiexit.policies.gate import OVERLOADED, REJECT_WHY, STOPPING
from mdiexit.protocol.codec import Limits, ProtocolError, decode, encode, peek
from mdiexit.protocol.messages import Hello, Info, Reply, Request
from mdiexit.runtime.arrivals import Offer
from mdiexit.runtime.ledger import Record
from mdiexit.security import CLIENT_DOMAIN, Identity, make_server

log = logging.getLogger("mdiexit.service")
POLL_MS = 50
MAX_CLIENT_MESSAGE = 64 << 20  # bytes: a longer message closes the connection (zmq), before any parsing
MAX_QUEUED_REPLIES = 100_000
# requests decoded but not yet offered to the gate: past this the source's loop cannot keep up with the requests
# themselves, and the endpoint refuses at once (overloaded) rather than let them wait in socket buffers
MAX_INTAKE = 1_000
# a request is refused unread when it waited longer than this many times the gate's --max-wait-ms (and at least
# UNREAD_MIN_S) before the endpoint could read it: the host has fallen seconds behind, not hiccuped
UNREAD_WAITS = 2.0
UNREAD_MIN_S = 1.0
_ENDPOINTS = itertools.count()


def request_id_of(header: Any) -> int:
    """The request id of a message that failed to decode, when its header still says it (else 0)."""
    try:
        head = msgspec.msgpack.decode(bytes(getattr(header, "buffer", header))[:65536])
        rid = head.get("request_id", 0) if isinstance(head, dict) else 0
        return rid if isinstance(rid, int) and 0 <= rid < 2**62 else 0
    except Exception:  # anything at all: the client gets an error reply either way
        return 0


class UnreadWait:
    """How long a request waited before the service read it, from the client's send time on its own clock: its
    one-way delay less the least seen from that client (the clocks' offset plus the bare transit), a floor that
    rises by DRIFT_PER_S so that clock drift never accumulates. No synchronised clocks needed."""

    DRIFT_PER_S = 1e-3  # 1000 ppm: far above any real clock's drift
    MAX_CLIENTS = 100_000

    def __init__(self) -> None:
        self.floor: dict[bytes, tuple[float, float]] = {}  # client -> (least delay, when)

    def waited_s(self, client: bytes, sent_at: float | None, t: float) -> float:
        if sent_at is None:
            return 0.0  # an older client: no send time to go by
        delay = t - sent_at
        least, at = self.floor.get(client, (delay, t))
        least = min(delay, least + self.DRIFT_PER_S * (t - at))
        if len(self.floor) >= self.MAX_CLIENTS and client not in self.floor:
            self.floor.clear()  # a bound on memory: the floors are learnt again from the next requests
        self.floor[client] = (least, t)
        return delay - least


class ClientEndpoint:
    """The Arrivals of a service: offers come from clients, answers go back to them."""

    done = False  # a service never runs out of arrivals; it is stopped
    labelled = False  # clients send inputs, not their true labels

    def __init__(self, ctx: zmq.Context, address: str, pkg: Package, identity: Identity | None,
                 wake: Callable[[], None], versions: Callable[[str], Package | None] | None = None,
                 current: Callable[[], str] | None = None):
        self.ctx, self.address, self.pkg, self.identity, self.wake = ctx, address, pkg, identity, wake
        # a roll-out serves two versions (runtime.rollout): a request may name either, or one retired since
        self.versions = versions or (lambda v: pkg if v == pkg.version else None)
        self.current = current or (lambda: pkg.version)  # the version INFO names
        self.input_shape = (1, *pkg.input_shape)
        self.input_bytes = int(np.prod(self.input_shape))
        self.limits = Limits(max_bytes=max(1 << 20, 4 * self.input_bytes), max_arrays=1)
        self.offers: queue.SimpleQueue[Offer] = queue.SimpleQueue()
        self.outbox_address = f"inproc://mdiexit-replies-{next(_ENDPOINTS)}"
        self.push: zmq.Socket | None = None  # the answering thread's (the source's loop)
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.refused: Counter[str] = Counter()  # requests rejected here, before the gate, by reason (this thread)
        self.stopping = False  # the service is shutting down: refuse what comes
        self.shedding = False  # the gate refuses new offers (overloaded): refuse them here, from the header alone
        # a request that waited longer than this before this thread could read it is refused as overloaded: the
        # host is not keeping up, and serving it late would only make the wait longer (set by the launcher)
        self.max_unread_s = float("inf")
        self.unread = UnreadWait()
        # (client, request id) of every request offered and not yet answered (this thread): a client that
        # reconnected sends its outstanding requests again, and one still held here is not taken twice
        self.open: set[tuple[bytes, int]] = set()

    def start(self) -> None:
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.MAXMSGSIZE, MAX_CLIENT_MESSAGE)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a client gone: its reply is dropped, not an error
        # replies queued per client; past this (a client that stopped reading) they are dropped
        self.router.setsockopt(zmq.SNDHWM, MAX_QUEUED_REPLIES)
        if self.identity is not None:
            self.router.zap_domain = CLIENT_DOMAIN.encode()
            make_server(self.router, self.identity)
        self.router.bind(self.address)
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.RCVHWM, 0)
        self.pull.bind(self.outbox_address)
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.setsockopt(zmq.SNDHWM, 0)  # answering never blocks the source's loop
        self.push.connect(self.outbox_address)
        self.thread = threading.Thread(target=self._loop, name="client-endpoint", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=2)
        for sock in (self.push, getattr(self, "pull", None), getattr(self, "router", None)):
            if sock is not None:
                sock.close(linger=0)

    # ---------------------------------------------------------------- Arrivals
    def take(self, t: float) -> list[Offer]:
        out = []
        while True:
            try:
                out.append(self.offers.get_nowait())
            except queue.Empty:
                return out

    def stop_taking(self) -> list[Offer]:
        """From now on the endpoint refuses new requests itself (stopping); the offers already queued are returned
        to be answered."""
        self.stopping = True
        return self.take(0.0)

    def shed(self, overloaded: bool) -> None:
        self.shedding = overloaded  # read by the socket's thread at the next request: one attribute, no lock

    def next_at(self, t: float) -> float:
        return t + POLL_MS / 1000  # a request wakes the source's loop sooner

    def answer(self, key: Any, outcome: str, reason: str, record: Record | None) -> None:
        client, request_id = key
        if outcome == "result" and record is not None:
            classes = (self.versions(record.package) or self.pkg).classes
            reply = Reply(request_id=request_id, outcome="result", label=record.label,
                          name=classes[record.label] if 0 <= record.label < len(classes) else "",
                          exit=record.exit, confidence=min(1.0, max(0.0, record.confidence)),
                          latency_ms=max(0.0, (record.done_at - record.admitted_at) * 1000), package=record.package)
        else:
            reply = Reply(request_id=request_id, outcome=outcome, reason=reason)
        self._send(client, reply)

    def _send(self, client: bytes, reply: Reply) -> None:
        if self.push is not None and not self.push.closed:
            self.push.send_multipart([client, reply.request_id.to_bytes(8, "big"), *encode(reply)])

    # ---------------------------------------------------------------- the socket's thread
    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.pull, zmq.POLLIN)
        while not self.stop.is_set():
            ready = dict(poller.poll(POLL_MS))
            if self.pull in ready:
                while True:
                    try:
                        client, request_id, *reply = self.pull.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self.open.discard((client.bytes, int.from_bytes(request_id.bytes, "big")))
                    self.router.send_multipart([client, *reply])
            if self.router in ready:
                while True:
                    try:
                        frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._on_request(frames)

    def _on_request(self, frames: list[zmq.Frame]) -> None:
        client = frames[0].bytes
        if len(frames) < 2:
            return
        head = peek(frames[1])
        if head.kind == Request.KIND:  # refused from its header, its array untouched: overload costs little
            if (client, head.request_id) in self.open:
                return  # sent again after a reconnection, and still held: its one answer is on its way
            unread_s = self.unread.waited_s(client, head.sent_at, time.time())
            if self.stopping:
                self._refuse(client, head.request_id, STOPPING)
                return
            if self.shedding or self.offers.qsize() >= MAX_INTAKE or unread_s > self.max_unread_s:
                self._refuse(client, head.request_id, OVERLOADED)
                return
        try:
            msg, arrays = decode(frames[1:], self.limits)
        except ProtocolError as e:
            self._error(client, request_id_of(frames[1]), f"bad request ({e})")
            return
        if isinstance(msg, Hello):
            pkg = self.pkg
            self.router.send_multipart([client, *encode(Info(input_shape=list(pkg.input_shape),
                                                             classes=list(pkg.classes), package=self.current()))])
        elif not isinstance(msg, Request):
            self._error(client, 0, f"{type(msg).__name__.upper()} is not a client message; send HELLO or REQUEST")
        elif msg.package is not None and self.versions(msg.package) is None:
            self._error(client, msg.request_id, f"package {msg.package!r} is not served here (serving "
                                                f"{self.current()}); reconnect to get the current one")
        else:
            x = arrays[0]
            if x.dtype != np.uint8 or x.shape != self.input_shape:
                self._error(client, msg.request_id, f"the input must be uint8 of shape {list(self.input_shape)}, "
                                                    f"got {x.dtype}{list(x.shape)}; convert it with the client "
                                                    "(mdiexit.Client), which resizes images to the package's input")
                return
            if self.stopping or self.offers.qsize() >= MAX_INTAKE:
                self._refuse(client, msg.request_id, STOPPING if self.stopping else OVERLOADED)
                return
            if (client, msg.request_id) in self.open:
                return  # sent again after a reconnection, and still held: its one answer is on its way
            self.open.add((client, msg.request_id))
            deadline_s = None if msg.deadline_ms is None else msg.deadline_ms / 1000
            self.offers.put(Offer(x, -1, (client, msg.request_id), deadline_s))
            self.wake()

    def _refuse(self, client: bytes, request_id: int, why: str) -> None:
        self.refused[why] += 1
        self.router.send_multipart([client, *encode(Reply(request_id=request_id, outcome="rejected",
                                                          reason=f"{why}: {REJECT_WHY[why]}"))])

    def _error(self, client: bytes, request_id: int, reason: str) -> None:
        log.warning("client request refused: %s", reason)
        self.router.send_multipart([client, *encode(Reply(request_id=request_id, outcome="error", reason=reason))])

