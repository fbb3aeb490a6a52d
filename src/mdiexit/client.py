"""The Python client of `mdiexit serve` (DESIGN §10).

    from mdiexit import Client
    with Client.from_cluster("cluster.yaml") as c:       # or Client("tcp://host:port", server_key=..., key_file=...)
        p = c.classify("cat.png")                         # Prediction(label, name, exit, confidence, latency_ms)
        f = c.submit(array)                               # a concurrent.futures.Future of a Prediction
        for p in c.map(images, max_in_flight=32): ...     # in order, at most 32 requests in flight

Every request ends in one outcome: a Prediction, or a ServiceError (Rejected, Expired, Failed, RequestError)
with the service's reason. Inputs are converted here (mdiexit.inputs) to what the service's package takes.
One I/O thread owns the socket; other threads hand it requests through an inproc pipe.
"""

from __future__ import annotations

import heapq
import itertools
import os
import random
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from mdiexit.inputs import to_input
from mdiexit.policies.gate import OVERLOADED
from mdiexit.protocol.codec import ProtocolError, decode, describe, encode
from mdiexit.protocol.messages import Hello, Info, Reply, Request

DEFAULT_TIMEOUT_S = 30.0  # no reply within this: the request fails here with TimeoutError
_PIPES = itertools.count()


@dataclass(frozen=True)
class Prediction:
    label: int
    name: str  # the class name
    exit: int  # the exit (task) it left the model at, 1-based
    confidence: float
    latency_ms: float  # at the source, from admission to result
    package: str = ""  # the package version that answered (two during a roll-out)


class ServiceError(Exception):
    """A request ended without a prediction: ``outcome`` rejected, expired, failed or error, and why."""

    def __init__(self, outcome: str, reason: str):
        super().__init__(f"{outcome}: {reason}")
        self.outcome, self.reason = outcome, reason


class Rejected(ServiceError):
    pass


class Expired(ServiceError):
    pass


class Failed(ServiceError):
    pass


class RequestError(ServiceError):
    pass


_ERRORS = {"rejected": Rejected, "expired": Expired, "failed": Failed, "error": RequestError}
# With retry_overloaded, a request refused as overloaded is sent again after this long, doubled at each refusal, up
# to RETRY_MAX_S, times a random factor in [0.5, 1.5] (so that refused clients do not all come back at once).
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 1.0


@dataclass
class _Outstanding:
    future: Future
    due: float  # when it times out
    retry_until: float  # the last moment a resend may leave: its deadline, else its timeout
    request: Request  # kept for a resend: after an overloaded refusal (retry_overloaded), or a reconnection
    x: np.ndarray
    attempts: int = 0

    def frames(self) -> list:
        """The request as sent now: stamped with this moment (the service measures its wait from it)."""
        return encode(msgspec.structs.replace(self.request, sent_at=time.time()), [self.x])


class Client:
    """A connection to a service. ``server_key``: the source's public key (Z85 text, or its .key file);
    ``key_file``: this client's secret key file (KEYS_DIR/clients/NAME.key_secret, from `mdiexit keys client`).
    ``insecure=True`` only for a service started with --insecure. ``retry_overloaded``: a request the service
    refuses as overloaded is sent again with jittered exponential backoff while its deadline (else its timeout)
    allows, and fails as Rejected only after that (`mdiexit classify` does this by default)."""

    def __init__(self, address: str, *, server_key: str | bytes | Path | None = None,
                 key_file: str | Path | None = None, insecure: bool = False,
                 timeout_s: float = DEFAULT_TIMEOUT_S, retry_overloaded: bool = False):
        self.address, self.timeout_s, self.retry_overloaded = address, timeout_s, retry_overloaded
        self.retries: list[tuple[float, int]] = []  # (when, request id): resends due, a heap of the I/O thread's
        self.jitter = random.Random()
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        # the same name on every connection: a request sent again after a reconnection is known as the same one
        self.sock.setsockopt(zmq.ROUTING_ID, b"mdiexit-client-" + os.urandom(12))
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self.disconnected = False
        self.reconnections = 0
        if not insecure:
            _secure(self.sock, server_key, key_file)
        self.sock.connect(address)
        self.pipe_address = f"inproc://mdiexit-client-{next(_PIPES)}"
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.RCVHWM, 0)
        self.pull.bind(self.pipe_address)
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.setsockopt(zmq.SNDHWM, 0)  # posting never blocks; map() is what bounds what is outstanding
        self.push.connect(self.pipe_address)
        self.lock = threading.Lock()  # pending (never held while a socket blocks: the I/O thread takes it)
        self.push_lock = threading.Lock()
        self.pending: dict[int, _Outstanding] = {}
        self.ids = itertools.count(1)
        self.info_future: Future[Info] = Future()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="mdiexit-client", daemon=True)
        self.thread.start()
        self._post(encode(Hello()))
        self.info: Info = self._wait_info()

    @classmethod
    def from_cluster(cls, cluster_file: str | Path, *, connect: str | None = None, key_file: str | Path | None = None,
                     insecure: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S,
                     retry_overloaded: bool = False, source: str | None = None) -> Client:
        """A client of a source of the cluster file (``source``, or the first one with a ``client_port``): its host
        and ``client_port``, its key, and the client key KEYS_DIR/clients/client.key_secret (or ``key_file``)."""
        from mdiexit.config import ConfigError, load_cluster

        cluster = load_cluster(Path(cluster_file))
        src = _served_source(cluster, source, cluster_file)
        if connect is None and src.client_port is None:
            raise ConfigError(f"{cluster_file}: the source {src.name!r} has no client_port; add `client_port: PORT` to "
                              "its entry (and start `mdiexit serve`), or give the service's address (--connect "
                              "tcp://HOST:PORT)")
        address = connect or f"tcp://{src.host}:{src.client_port}"
        if insecure:
            return cls(address, insecure=True, timeout_s=timeout_s, retry_overloaded=retry_overloaded)
        server_key: str | Path | None = src.public_key
        if server_key is None and cluster.keys_dir is not None:
            server_key = cluster.keys_dir / f"{src.name}.key"
        if key_file is None and cluster.keys_dir is not None:
            key_file = cluster.keys_dir / "clients" / "client.key_secret"
        return cls(address, server_key=server_key, key_file=key_file, timeout_s=timeout_s,
                   retry_overloaded=retry_overloaded)

    # ---------------------------------------------------------------- requests
    def submit(self, image: Any, deadline_ms: float | None = None) -> Future:
        """Send one input; the Future holds its Prediction or raises its ServiceError."""
        x = to_input(image, tuple(self.info.input_shape))
        fut: Future = Future()
        rid = next(self.ids)
        req = Request(request_id=rid, deadline_ms=deadline_ms, package=self.info.package, arrays=[describe("x", x)])
        t = time.monotonic()
        retry_until = t + (self.timeout_s if deadline_ms is None else deadline_ms / 1000)
        out = _Outstanding(fut, t + self.timeout_s + (deadline_ms or 0) / 1000, retry_until, req, x)
        with self.lock:
            self.pending[rid] = out
        self._post(out.frames())
        return fut

    def classify(self, image: Any, deadline_ms: float | None = None) -> Prediction:
        return self.submit(image, deadline_ms).result()

    def map(self, images: Iterable[Any], max_in_flight: int = 16, deadline_ms: float | None = None,
            return_errors: bool = False) -> Iterator[Prediction | ServiceError]:
        """Predictions in input order, keeping at most ``max_in_flight`` requests outstanding. A request that
        ends without one raises its ServiceError, or (``return_errors``) yields it."""
        window: deque[Future] = deque()
        for image in images:
            window.append(self.submit(image, deadline_ms))
            if len(window) >= max_in_flight:
                yield self._outcome(window.popleft(), return_errors)
        while window:
            yield self._outcome(window.popleft(), return_errors)

    @staticmethod
    def _outcome(fut: Future, return_errors: bool) -> Prediction | ServiceError:
        try:
            return fut.result()
        except ServiceError as e:
            if return_errors:
                return e
            raise

    # ---------------------------------------------------------------- plumbing
    def _post(self, frames: list) -> None:
        with self.push_lock:
            if self.stop.is_set():
                raise RuntimeError("the client is closed")
            self.push.send_multipart(frames)

    def _wait_info(self) -> Info:
        try:
            return self.info_future.result(timeout=self.timeout_s)
        except TimeoutError:
            self.close()
            raise TimeoutError(f"no answer from {self.address} within {self.timeout_s:g} s: is `mdiexit serve` "
                               "running there, and are the keys right (the source's key, a client key it allows)?"
                               ) from None

    def _loop(self) -> None:
        """Move requests to the service and replies to their futures. Never blocks on a send: while the service
        is slow to take requests, they wait here and replies keep being read."""
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.pull, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        outgoing: deque[list] = deque()
        while not self.stop.is_set():
            outgoing.extend(self._due_resends(time.monotonic()))
            wait_ms = 5 if outgoing else 50
            if self.retries:
                wait_ms = min(wait_ms, max(1, int((self.retries[0][0] - time.monotonic()) * 1000)))
            ready = dict(poller.poll(wait_ms))
            if self.monitor in ready:
                while self.monitor.poll(0):
                    outgoing.extend(self._on_connection(recv_monitor_message(self.monitor)["event"]))
            if self.pull in ready:
                while True:
                    try:
                        outgoing.append(self.pull.recv_multipart(zmq.NOBLOCK, copy=False))
                    except zmq.Again:
                        break
            while outgoing:
                try:
                    self.sock.send_multipart(outgoing[0], zmq.NOBLOCK)
                    outgoing.popleft()
                except zmq.Again:
                    break
            if self.sock in ready:
                while True:
                    try:
                        self._on_reply(self.sock.recv_multipart(zmq.NOBLOCK, copy=False))
                    except zmq.Again:
                        break
            self._expire(time.monotonic())

    def _on_reply(self, frames: list) -> None:
        try:
            msg, _ = decode(frames)
        except ProtocolError:
            return
        if isinstance(msg, Info):
            if not self.info_future.done():
                self.info_future.set_result(msg)
            return
        if not isinstance(msg, Reply):
            return
        t = time.monotonic()
        with self.lock:
            out = self.pending.get(msg.request_id)
            if out is None:
                return
            if msg.outcome == "rejected" and self.retry_overloaded and msg.reason.startswith(OVERLOADED):
                delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** out.attempts) * self.jitter.uniform(0.5, 1.5)
                if t + delay < out.retry_until:
                    out.attempts += 1
                    heapq.heappush(self.retries, (t + delay, msg.request_id))
                    return
            del self.pending[msg.request_id]
        fut = out.future
        if fut.done():
            return
        if msg.outcome == "result":
            fut.set_result(Prediction(msg.label, msg.name, msg.exit, msg.confidence, msg.latency_ms, msg.package))
        else:
            fut.set_exception(_ERRORS[msg.outcome](msg.outcome, msg.reason))

    def _due_resends(self, t: float) -> list[list]:
        """The frames of the refused requests whose backoff has passed (I/O thread)."""
        due = []
        while self.retries and self.retries[0][0] <= t:
            _, rid = heapq.heappop(self.retries)
            with self.lock:
                out = self.pending.get(rid)
            if out is not None:
                due.append(out.frames())
        return due

    def _on_connection(self, event: int) -> list[list]:
        """A connection event of the service's socket; after a reconnection (the service restarted, or the network
        came back), every request still outstanding is sent again: the one that had it is gone, or answers once
        (the service drops a request id it already holds)."""
        if event == zmq.EVENT_DISCONNECTED:
            self.disconnected = True
            return []
        if event != zmq.EVENT_HANDSHAKE_SUCCEEDED or not self.disconnected:
            return []
        self.disconnected = False
        self.reconnections += 1
        with self.lock:
            return [out.frames() for out in self.pending.values() if not out.future.done()]

    def _expire(self, t: float) -> None:
        with self.lock:
            late = [rid for rid, out in self.pending.items() if out.due < t]
            futs = [self.pending.pop(rid).future for rid in late]
        for fut in futs:
            fut.set_exception(TimeoutError(f"no reply from {self.address} within {self.timeout_s:g} s"))

    def close(self) -> None:
        with self.push_lock, self.lock:
            self.stop.set()
            futs = [out.future for out in self.pending.values()]
            self.pending.clear()
        for fut in futs:
            if not fut.done():
                fut.set_exception(RuntimeError("the client was closed before the reply came"))
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=2)
        self.sock.disable_monitor()
        for s in (self.push, self.pull, self.monitor, self.sock):
            s.close(linger=0)
        self.ctx.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _secure(sock: zmq.Socket, server_key: str | bytes | Path | None, key_file: str | Path | None) -> None:
    from mdiexit.security import KeyFileError, check_key_text, read_public, read_secret

    if server_key is None or key_file is None:
        raise KeyFileError("a secure client needs the source's public key (server_key) and its own secret key "
                           "(key_file, from `mdiexit keys client --keys-dir DIR`); or insecure=True for a service "
                           "started with --insecure")
    if isinstance(server_key, Path) or (isinstance(server_key, str) and len(server_key) != 40):
        server = read_public(Path(server_key))
    else:
        server = check_key_text(server_key, "server_key")
    public, secret = read_secret(Path(key_file))
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server, public, secret


def _served_source(cluster, name: str | None, cluster_file):
    """The source a client feeds: the one named, or the first with a client_port (else the first)."""
    from mdiexit.config import ConfigError

    if name is not None:
        found = next((n for n in cluster.sources if n.name == name), None)
        if found is None:
            raise ConfigError(f"{cluster_file}: no source named {name!r}; its sources are "
                              f"{', '.join(n.name for n in cluster.sources)}")
        return found
    return next((n for n in cluster.sources if n.client_port is not None), cluster.source)

