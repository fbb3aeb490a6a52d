"""The client against a service played here on a real ZeroMQ socket: what it does when a request is refused."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from mdiexit.client import Client, Rejected
from mdiexit.policies.gate import OVERLOADED, REJECT_WHY
from mdiexit.protocol.codec import decode, encode
from mdiexit.protocol.messages import Hello, Info, Reply, Request

SHAPE = [1, 28, 28]  # (C, H, W): the request carries (1, C, H, W)


class RefusingService:
    """Answers HELLO, refuses each request's first ``refusals`` sendings as overloaded, then gives a result."""

    def __init__(self, refusals: int, port: int | None = None, silent: bool = False):
        self.refusals, self.silent = refusals, silent  # silent: takes requests and never answers (about to crash)
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        if port is None:
            self.port = self.router.bind_to_random_port("tcp://127.0.0.1")
        else:
            self.port = port
            self.router.bind(f"tcp://127.0.0.1:{port}")
        self.seen: dict[int, int] = {}  # request id -> sendings received
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stop.is_set():
            if not self.router.poll(20):
                continue
            client, *frames = self.router.recv_multipart()
            msg, _ = decode(frames)
            if isinstance(msg, Hello):
                reply = Info(input_shape=SHAPE, classes=[str(i) for i in range(10)], package="p")
            elif isinstance(msg, Request):
                n = self.seen[msg.request_id] = self.seen.get(msg.request_id, 0) + 1
                if self.silent:
                    continue
                reply = (Reply(request_id=msg.request_id, outcome="rejected",
                               reason=f"{OVERLOADED}: {REJECT_WHY[OVERLOADED]}") if n <= self.refusals else
                         Reply(request_id=msg.request_id, outcome="result", label=3, name="3", exit=1,
                               confidence=0.9, latency_ms=1.0))
            self.router.send_multipart([client, *encode(reply)])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.router.close(linger=0)
        self.ctx.term()


@pytest.fixture
def service():
    s = RefusingService(refusals=3)
    yield s
    s.close()


def test_a_refused_request_is_sent_again_with_backoff_until_it_gets_its_result(service):
    image = np.zeros((28, 28), np.uint8)
    with Client(f"tcp://127.0.0.1:{service.port}", insecure=True, timeout_s=10, retry_overloaded=True) as c:
        predictions = [f.result(timeout=10) for f in [c.submit(image) for _ in range(5)]]
    assert [p.label for p in predictions] == [3] * 5
    assert sorted(service.seen.values()) == [4] * 5  # three refusals each, then the result


def test_without_retry_a_refusal_is_the_outcome(service):
    with Client(f"tcp://127.0.0.1:{service.port}", insecure=True, timeout_s=10) as c:
        with pytest.raises(Rejected, match="overloaded"):
            c.classify(np.zeros((28, 28), np.uint8))
    assert list(service.seen.values()) == [1]


def test_retries_stop_at_the_requests_deadline(service):
    """Refused for longer than its deadline allows: it ends Rejected (not a timeout), once, after a few tries."""
    service.refusals = 1000
    with Client(f"tcp://127.0.0.1:{service.port}", insecure=True, timeout_s=10, retry_overloaded=True) as c:
        with pytest.raises(Rejected, match="overloaded"):
            c.submit(np.zeros((28, 28), np.uint8), deadline_ms=300).result(timeout=10)
    assert 2 <= list(service.seen.values())[0] <= 6  # 50, 100, 200 ms... of backoff fit in 300 ms a few times


def test_requests_outstanding_when_the_service_restarts_are_sent_again_and_answered():
    first = RefusingService(refusals=0, silent=True)
    image = np.zeros((28, 28), np.uint8)
    with Client(f"tcp://127.0.0.1:{first.port}", insecure=True, timeout_s=20) as c:
        futures = [c.submit(image) for _ in range(5)]
        deadline = time.monotonic() + 10
        while len(first.seen) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(first.seen) == 5  # taken, never answered: the service dies with them
        first.close()
        second = RefusingService(refusals=0, port=first.port)  # started again on the same port
        try:
            assert [f.result(timeout=20).label for f in futures] == [3] * 5
            assert c.reconnections == 1 and sorted(second.seen) == sorted(first.seen)
        finally:
            second.close()
