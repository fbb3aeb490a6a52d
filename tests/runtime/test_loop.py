"""The loop that owns a node's cores (runtime.loop): posted calls run on its thread, in order; asks return what
the call returned or raise what it raised; timers fire in time order; a failing call is logged and the loop goes
on; a stop wakes it."""

import threading

import pytest

from mdiexit.clock import REAL_TIME, WallClock
from mdiexit.runtime.loop import Loop, LoopTimeout


@pytest.fixture
def running():
    loop, stop = Loop(REAL_TIME), threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    loop.ask(lambda: None)  # it is running
    yield loop
    stop.set()
    loop.wake()
    thread.join(timeout=5)
    assert not thread.is_alive()
    loop.close()


def test_posted_calls_run_on_the_loops_thread_in_the_order_posted(running):
    seen: list[tuple[int, int]] = []
    for i in range(200):
        running.post(lambda i=i: seen.append((i, threading.get_ident())))
    owner = running.ask(threading.get_ident)
    assert [i for i, _ in seen] == list(range(200))
    assert {ident for _, ident in seen} == {owner} != {threading.get_ident()}


def test_ask_returns_the_value_or_raises_the_error_in_the_asking_thread(running):
    assert running.ask(lambda: 6 * 7) == 42
    with pytest.raises(ZeroDivisionError):
        running.ask(lambda: 1 / 0)
    assert running.ask(lambda: "still running") == "still running"


def test_timers_fire_in_time_order_and_a_failing_call_does_not_stop_the_loop(running):
    fired: list[str] = []
    done = threading.Event()

    def arm() -> None:
        t = REAL_TIME.now()
        running.at(t + 0.06, lambda: (fired.append("late"), done.set()))
        running.at(t + 0.02, lambda: 1 / 0)  # logged; the loop goes on
        running.at(t + 0.03, lambda: fired.append("early"))

    running.post(arm)
    assert done.wait(5)
    assert fired == ["early", "late"]


def test_after_hooks_run_after_each_round_and_are_called_again_when_they_ask(running):
    calls: list[float] = []
    enough = threading.Event()

    def hook(t: float) -> float | None:
        calls.append(t)
        if len(calls) >= 5:
            enough.set()
            return None
        return t + 0.01  # asks again in 10 ms, with nothing else to wake the loop

    running.post(lambda: running.after.append(hook))
    assert enough.wait(5)


def test_an_ask_of_a_stopped_loop_times_out_instead_of_hanging():
    loop, stop = Loop(REAL_TIME), threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    loop.ask(lambda: None)
    blocked = threading.Event()
    loop.post(lambda: blocked.wait(5))  # the loop is stuck in a long call
    with pytest.raises(LoopTimeout):
        loop.ask(lambda: None, timeout_s=0.2)
    blocked.set()
    stop.set()
    loop.wake()
    thread.join(timeout=5)
    assert loop.ask(lambda: "runs here once the loop is gone") == "runs here once the loop is gone"
    loop.close()


def test_a_dilated_loops_timers_fire_in_its_own_time():
    """A loop on a clock dilated 4 times fires a timer set 50 ms ahead of its clock no sooner than 200 ms of the
    host's time later (less the half-millisecond the poll's resolution allows), and hands its hooks times on its
    own clock."""
    import time

    clock = WallClock(4.0)
    loop, stop = Loop(clock), threading.Event()
    fired: list[tuple[float, float]] = []
    done = threading.Event()
    wall0, t0 = time.monotonic(), clock.now()
    loop.at(t0 + 0.05, lambda: (fired.append((time.monotonic() - wall0, clock.now() - t0)), done.set()))
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert done.wait(5)
        wall_s, clock_s = fired[0]
        assert clock_s >= 0.05 - loop.early_s and wall_s >= 0.2 - 0.0005
        assert clock_s == pytest.approx(wall_s / 4, abs=0.01)
    finally:
        stop.set()
        loop.wake()
        thread.join(timeout=5)
        loop.close()
