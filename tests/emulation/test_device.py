"""The calibrated device model: an emulated call lasts f x its profiled time, whatever else the host does."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import numpy as np
import pytest

from mdiexit.emulation.device import DeviceModel

A = np.random.default_rng(0).standard_normal((160, 160))


def work(batch: int):
    return lambda: [A @ A for _ in range(batch)]


def test_profiles_interpolate_and_give_the_per_item_limit():
    m = DeviceModel(10.0, profiled_s={("task", 1): {1: 0.001, 4: 0.0025, 8: 0.004}})
    assert m.host_s(("task", 1), 1) == pytest.approx(0.001)
    assert m.host_s(("task", 1), 2) == pytest.approx(0.0015)  # linear between profiled batch sizes
    assert m.host_s(("task", 1), 16) == pytest.approx(0.008)  # past the largest: per item as there
    assert m.per_item_s(("task", 1)) == pytest.approx(10 * 0.0005)  # best per-item time, batch 8
    assert m.host_s(("task", 2), 1) is None and m.per_item_s(("task", 2)) is None


def test_real_devices_and_measured_emulation_do_not_profile():
    assert DeviceModel.calibrate(1.0, {("task", 1): work}, max_batch=4).profiled_s == {}
    measured = DeviceModel.calibrate(5.0, {("task", 1): work}, max_batch=4, emulation="measured")
    assert measured.profiled_s == {} and measured.budget_s(("task", 1), 1, 0.002) == pytest.approx(0.01)


def test_a_call_slower_than_its_budget_is_an_overrun():
    m = DeviceModel(2.0, profiled_s={("task", 1): {1: 0.001}})
    _, seconds = m.run(("task", 1), 1, lambda: time.sleep(0.01))
    assert m.overruns == 1 and m.overrun_fraction == 1.0 and seconds >= 0.01
    _, seconds = m.run(("task", 1), 1, lambda: None)
    assert m.overruns == 1 and seconds == pytest.approx(0.002)


def test_the_runtimes_cpu_is_charged_to_the_next_task_call_under_cpu_slowdown():
    """Charged runtime CPU x cpu_slowdown lengthens the next task call (not a codec call) and only it."""
    m = DeviceModel(2.0, profiled_s={("task", 1): {1: 0.001}, ("encode", 1): {1: 0.001}}, cpu_slowdown=3.0)
    m.charge_runtime(0.002)
    assert m.owed_s == pytest.approx(0.006) and m.charged_s == pytest.approx(0.006)
    _, encode_s = m.run(("encode", 1), 1, lambda: None)
    assert encode_s == pytest.approx(0.002) and m.owed_s == pytest.approx(0.006)
    _, task_s = m.run(("task", 1), 1, lambda: None)
    assert task_s == pytest.approx(0.002 + 0.006) and m.owed_s == 0
    _, task_s = m.run(("task", 1), 1, lambda: None)
    assert task_s == pytest.approx(0.002)
    free = DeviceModel(2.0, profiled_s={("task", 1): {1: 0.001}})  # no cpu_slowdown: the runtime is free
    free.charge_runtime(0.002)
    assert free.owed_s == free.charged_s == 0


@pytest.mark.parametrize("hogs", [0, 1], ids=["quiet", "a-cpu-hog"])
def test_emulated_time_holds_under_host_contention(hogs):
    # One hog on this 2-core machine: host load within the headroom the runs warn about (70 % of the cores). With a
    # hog on every core the host is saturated, a woken device waits for a time slice (2-3 ms here), and the runs'
    # headroom check says the emulation can no longer be faithful.
    f = 200.0  # an emulated task of ~20 ms, as on edge4; a sleep's wake-up jitter is far below 5 % of it
    m = DeviceModel.calibrate(f, {("task", 1): work}, max_batch=2, repeats=7)
    budget = f * m.host_s(("task", 1), 1)
    procs = [subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<60: pass"])
             for _ in range(hogs)]
    try:
        walls = []
        for _ in range(15):
            t0 = time.perf_counter()
            m.run(("task", 1), 1, work(1))
            walls.append(time.perf_counter() - t0)
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
    assert statistics.median(walls) == pytest.approx(budget, rel=0.05)


def test_calibration_keeps_the_uninterrupted_time_when_most_calls_are_interrupted():
    """Three of five calls interrupted (another node starting beside the calibration): a median would take an
    interrupted one; the calibration keeps the call nothing interrupted."""
    calls = iter([0.05, 0.05, 0.05, 0.002, 0.05, 0.05, 0.002])  # a warm pass, a warm-up call, then five timed

    def work(batch: int):
        return lambda: time.sleep(next(calls))

    model = DeviceModel.calibrate(10.0, {("task", 1): work}, max_batch=1)
    assert model.profiled_s[("task", 1)][1] < 0.025


def test_a_busy_device_keeps_its_own_timeline():
    m = DeviceModel(50.0, profiled_s={("task", 1): {1: 0.002}})  # 100 ms a call
    _, seconds, end = m.run_from(("task", 1), 1, lambda: None, None)
    assert seconds == pytest.approx(0.1) and time.perf_counter() >= end
    time.sleep(0.05)  # the host thread comes back late; the next work was already waiting at `end`
    t0 = time.perf_counter()
    _, seconds, end2 = m.run_from(("task", 1), 1, lambda: None, end)
    assert seconds == pytest.approx(0.1) and end2 == pytest.approx(end + 0.1)
    assert end2 <= time.perf_counter() < t0 + 0.095  # the late wake-up was not added to the device's time
    _, _, end3 = m.run_from(("task", 1), 1, lambda: None, None)  # work that was not waiting starts now
    assert end3 >= end2 + 0.1
