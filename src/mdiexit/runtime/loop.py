"""The one thread that owns a process's cores (DESIGN §4). It polls the node's sockets, runs what other threads
post to it, fires its timers, and after every round lets its hooks look again (hand the device its next batch,
admit what arrived). Nothing else touches a core, the ledger or the link meter: the compute executor, the link
senders, the client endpoint and the launcher post a call here (``post``) or ask for an answer (``ask``), and a
byte on a pipe wakes the poll.

    loop = Loop(WallClock(k))                     # the process's one clock (mdiexit.clock)
    loop.on_readable(inbox, handle_messages)      # handle_messages(inbox): receive what is there
    loop.at(now + 0.05, heartbeat)                # a timer; heartbeat may set the next one
    loop.after.append(dispatch)                   # dispatch(t) -> when it wants to run again, or None
    threading.Thread(target=loop.run, args=(stop,)).start()
    loop.post(lambda: node_down("w1"))            # from any thread
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import zmq

from mdiexit.clock import Clock

log = logging.getLogger("mdiexit.loop")
MAX_WAIT_S = 0.1  # host seconds the poll sleeps at most: a stop set without a wake is seen within this
EARLY_S = 0.0005  # host seconds a timer may fire before it is due: the poll waits whole ms, rounded
T = TypeVar("T")


class LoopTimeout(TimeoutError):
    """The loop did not answer an ``ask`` in time (it is stopped, or stuck in a long call)."""


class Loop:
    def __init__(self, clock: Clock):
        self.clock = clock
        self.posted: queue.SimpleQueue[Callable[[], Any]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.timers: list[tuple[float, int, Callable[[], Any]]] = []
        self._order = itertools.count()  # ties between timers fire in the order they were set
        self.readers: list[tuple[zmq.Socket, Callable[[zmq.Socket], Any]]] = []
        self.after: list[Callable[[float], float | None]] = []
        self.owner: int | None = None  # the thread running the loop
        self.early_s = EARLY_S / clock.wall_s(1.0)  # in the clock's seconds
        self.closed = False

    # ---------------------------------------------------------------- from any thread
    def wake(self) -> None:
        if self.closed:
            return
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: the loop is awake already

    def post(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the loop's thread, soon (calls posted from one thread run in the order posted)."""
        self.posted.put(fn)
        self.wake()

    def ask(self, fn: Callable[[], T], timeout_s: float | None = 5.0) -> T:
        """Run ``fn`` on the loop's thread and return what it returns (or raise what it raised)."""
        if threading.get_ident() == self.owner or self.owner is None:
            return fn()  # the owner itself, or a loop not started yet (nothing else runs the core)
        done = threading.Event()
        box: list = []

        def call() -> None:
            try:
                box.append((True, fn()))
            except BaseException as e:  # handed to the asking thread, raised there
                box.append((False, e))
            done.set()

        self.post(call)
        if not done.wait(timeout_s):
            raise LoopTimeout(f"the node's loop did not answer within {timeout_s} s")
        ok, value = box[0]
        if not ok:
            raise value
        return value

    # ---------------------------------------------------------------- on the loop's thread (or before it runs)
    def at(self, t: float, fn: Callable[[], Any]) -> None:
        heapq.heappush(self.timers, (t, next(self._order), fn))

    def on_readable(self, sock: zmq.Socket, fn: Callable[[zmq.Socket], Any]) -> None:
        self.readers.append((sock, fn))

    def run(self, stop: threading.Event) -> None:
        self.owner = threading.get_ident()
        poller = zmq.Poller()
        for sock, _ in self.readers:
            poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        timer_t = hook_t = self.clock.now()
        try:
            while not stop.is_set():
                ready = dict(poller.poll(self._wait_ms(timer_t, hook_t)))
                if self._wake_r in ready:
                    self._drain_pipe()
                if not self.posted.empty():
                    self._run_posted()
                if ready:
                    for sock, fn in self.readers:
                        if sock in ready:
                            self._call(fn, sock)
                timer_t, hook_t = self._fire_timers(), math.inf
                t = self.clock.now()
                for hook in self.after:
                    if (want := self._call(hook, t)) is not None:
                        hook_t = min(hook_t, want)
        finally:
            self.owner = None  # from now on an ask runs in the asking thread: nothing else runs the core
            self._run_posted()  # an ask still waiting gets its answer

    def close(self) -> None:
        """Once the loop's thread has ended: its wake pipe goes."""
        if not self.closed:
            self.closed = True
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _wait_ms(self, timer_t: float, hook_t: float) -> int:
        """Whole ms the poll may sleep: to the next timer, rounded (it fires within EARLY_S of its time), or to
        the time a hook asked for, rounded up (a hook is called no sooner: a wait rounded down would spin)."""
        now, wall_s = self.clock.now(), self.clock.wall_s
        timer_ms = round(wall_s(max(0.0, timer_t - now)) * 1000)
        hook_ms = math.ceil(wall_s(max(0.0, hook_t - now)) * 1000) if hook_t < math.inf else timer_ms
        return min(round(MAX_WAIT_S * 1000), timer_ms, hook_ms)

    def _drain_pipe(self) -> None:
        try:
            os.read(self._wake_r, 4096)  # a byte left over only wakes the next poll at once
        except BlockingIOError:
            pass

    def _run_posted(self) -> None:
        while True:
            try:
                fn = self.posted.get_nowait()
            except queue.Empty:
                return
            self._call(fn)

    def _fire_timers(self) -> float:
        """Run the timers that are due; returns when the next one is (or MAX_WAIT_S from now)."""
        timers, now = self.timers, self.clock.now
        while timers and timers[0][0] <= now() + self.early_s:
            self._call(heapq.heappop(timers)[2])
        return timers[0][0] if timers else now() + MAX_WAIT_S

    @staticmethod
    def _call(fn: Callable, *args):
        try:
            return fn(*args)
        except Exception:  # one bad call must not stop the node: it is logged, and the loop goes on
            log.exception("the node's loop: %s failed", getattr(fn, "__qualname__", fn))
            return None
