"""The emulated device (DESIGN §7): a node with slowdown f makes each piece of compute last f times what the
host took for it *in isolation*, measured once at start-up. Compute first, then sleep the remainder.

    model = DeviceModel.calibrate(slowdown, {("task", 1): run_task1, ...}, max_batch=8)
    out, seconds = model.run(("task", 1), batch, lambda: engine.run(1, x))

With ``emulation: measured`` the old rule applies instead: f x the time this very call took, which turns
every scheduler hiccup inside the call into f hiccups. A slowdown of 1 is a real device: no profiling, no
sleep. A busy device's calls follow one another on its own timeline (`run_from`), so a host thread that wakes
late does not slow the device down. `overruns` counts task calls (of `calls`) whose real compute took longer than
their emulated budget (the host can no longer keep the emulation faithful).

The runtime's own work (messages, threads, the ledger: everything but the model's calls) runs at the host's full
speed, for free, unless the node has a `cpu_slowdown`: then the host CPU the node's runtime used since its last call
(`charge_runtime`), times `cpu_slowdown`, is owed by the device and paid before its next call, as a real device's
CPU would spend it. `engine_cpu_s` is the host CPU inside the model's calls, which tells the runtime's share apart.
"""

from __future__ import annotations

import fcntl
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mdiexit.clock import REAL_TIME, WallClock
from mdiexit.util import isolated_s

EMULATIONS = ("calibrated", "measured", "zero-cost")  # zero-cost: the runtime alone (emulation.zerocost)
PROFILE_BATCHES = (1, 2, 4, 8, 16, 32, 64)
DEVICE_PROFILE_ENV = "MDIEXIT_DEVICE_PROFILE"  # --device-profile: a JSON file of host profiles, reused where it has one
NO_PROFILE_FILE = "none"  # --device-profile none: profile the host at every start, keep nothing
LOCK_FILE = Path(tempfile.gettempdir()) / "mdiexit-profile.lock"  # nodes on one host profile one at a time

Key = tuple[str, int]  # ("task" | "encode" | "decode", task index)


def profile_file() -> tuple[Path | None, str]:
    """Where the host's profiles are kept, and the prefix of their names there. --device-profile FILE: in FILE,
    whatever the host (the devices it pins travel); else in this user's cache (XDG_CACHE_HOME or ~/.cache), under
    this host's name (its CPU, core count and ONNX Runtime), so that `run`, `simulate` and `plan` on one host emulate
    the same devices; --device-profile none: nowhere."""
    pinned = os.environ.get(DEVICE_PROFILE_ENV)
    if pinned == NO_PROFILE_FILE:
        return None, ""
    if pinned:
        return Path(pinned), ""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mdiexit" / "device-profile.json"
    return cache, f"{host_name()} "


def host_name() -> str:
    """This host's CPU model, core count and ONNX Runtime version: a cached profile is only this host's."""
    import platform

    import onnxruntime

    model = platform.processor()
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), model)
    except OSError:
        pass
    return f"[{model or platform.machine()} x{os.cpu_count()} ort {onnxruntime.__version__}]"


def profile_batches(max_batch: int) -> list[int]:
    """The batch sizes a device is profiled at (others are interpolated)."""
    return sorted({b for b in PROFILE_BATCHES if b < max_batch} | {max_batch})


@dataclass
class DeviceModel:
    slowdown: float
    emulation: str = "calibrated"
    profiled_s: dict[Key, dict[int, float]] = field(default_factory=dict)  # key -> batch -> host seconds
    calls: int = 0  # task calls (codec calls are not counted)
    overruns: int = 0
    cpu_slowdown: float | None = None  # the runtime's own host CPU x this is charged to the device (None: free)
    engine_cpu_s: float = 0.0  # host CPU seconds spent inside the model's and codecs' calls (by the calling thread)
    charged_s: float = 0.0  # device seconds charged for the runtime's own work, in all
    owed_s: float = 0.0  # charged, not yet paid: the next call lasts this much longer
    cpu_start: tuple[float, float] = (0.0, 0.0)  # (process, engine) CPU seconds when the node started serving
    cpu_mark: tuple[float, float] = (0.0, 0.0)  # the same at the last charge
    clock: WallClock = REAL_TIME  # budgets are in the cluster's time; dilated, each lasts k times as long here

    @classmethod
    def calibrate(cls, slowdown: float, work: dict[Key, Callable[[int], Callable[[], object]]], max_batch: int,
                  emulation: str = "calibrated", repeats: int = 5) -> DeviceModel:
        """Profile each piece of `work` (key -> batch size -> a call doing it) at batch sizes up to `max_batch`,
        the fastest of `repeats` (util.isolated_s), holding a host-wide lock so that no other node's profiling runs
        beside it."""
        model = cls(slowdown, emulation)
        if slowdown == 1.0 or emulation != "calibrated":
            return model
        batches = profile_batches(max_batch)
        with LOCK_FILE.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                calls = {key: {b: make(b) for b in batches} for key, make in work.items()}
                for per_batch in calls.values():  # one pass over everything first: a cold process (CPU clock,
                    for call in per_batch.values():  # caches, allocator) made its first key up to 35 % slower
                        call()
                for key, per_batch in calls.items():
                    model.profiled_s[key] = {b: isolated_s(call, repeats, warmup=1) for b, call in per_batch.items()}
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return model

    def host_s(self, key: Key, batch: int) -> float | None:
        """Profiled host seconds of `key` at `batch`, interpolated linearly between profiled batch sizes."""
        prof = self.profiled_s.get(key)
        if not prof:
            return None
        sizes = sorted(prof)
        if batch <= sizes[0]:
            return prof[sizes[0]] * batch / sizes[0]
        for lo, hi in zip(sizes, sizes[1:], strict=False):
            if batch <= hi:
                return prof[lo] + (prof[hi] - prof[lo]) * (batch - lo) / (hi - lo)
        return prof[sizes[-1]] * batch / sizes[-1]

    def per_item_s(self, key: Key) -> float | None:
        """The emulated device's best seconds per item for `key` over the profiled batch sizes (its limit)."""
        prof = self.profiled_s.get(key)
        return None if not prof else self.slowdown * min(t / b for b, t in prof.items())

    def budget_s(self, key: Key, batch: int, measured_s: float) -> float:
        if self.emulation == "zero-cost":
            return 0.0
        host = self.host_s(key, batch) if self.emulation == "calibrated" else None
        return self.slowdown * (host if host is not None else measured_s)

    def start_runtime_clock(self) -> None:
        """The node starts serving: its runtime's CPU is counted from now (not its start-up and warm-up)."""
        self.cpu_start = self.cpu_mark = (time.process_time(), self.engine_cpu_s)

    def runtime_cpu_s(self, since: tuple[float, float] | None = None) -> float:
        """Host CPU seconds the node's runtime used since ``since`` (default: it started serving): the whole
        process's CPU less the model's calls' (ONNX Runtime's pool threads, with threads > 1, count as the
        runtime's)."""
        since = since or self.cpu_start
        return (time.process_time() - since[0]) - (self.engine_cpu_s - since[1])

    def charge_runtime(self, runtime_cpu_s: float | None = None) -> None:
        """With a `cpu_slowdown`, the device owes the runtime's host CPU (``runtime_cpu_s``, default: what it used
        since the last charge) times it, paid before its next task call."""
        if not self.cpu_slowdown:
            return
        if runtime_cpu_s is None:
            mark = (time.process_time(), self.engine_cpu_s)
            runtime_cpu_s, self.cpu_mark = self.runtime_cpu_s(self.cpu_mark), mark
        if runtime_cpu_s > 0:
            self.owed_s += runtime_cpu_s * self.cpu_slowdown
            self.charged_s += runtime_cpu_s * self.cpu_slowdown

    def run(self, key: Key, batch: int, fn: Callable[[], object]) -> tuple[object, float]:
        """Run `fn` as this device would: returns its result and the emulated seconds it took."""
        out, seconds, _ = self.run_from(key, batch, fn, None)
        return out, seconds

    def run_from(self, key: Key, batch: int, fn: Callable[[], object],
                 start: float | None) -> tuple[object, float, float]:
        """`run`, on the device's own timeline: ``start`` (time.perf_counter) is when the device took the work up,
        the end of its previous call when the work was already waiting then (None: now). A host thread that woke
        late (the scheduler, the GIL, a sleep's overshoot) then does not lengthen the device's time: the call
        lasts until ``start`` + its emulated time. Returns (result, emulated seconds in the cluster's time, when
        the call ended on the host's perf_counter)."""
        t0, cpu0 = time.perf_counter(), time.thread_time()
        out = fn()
        measured = time.perf_counter() - t0  # the host's own seconds: a measurement, not the cluster's time
        self.engine_cpu_s += time.thread_time() - cpu0
        budget = self.budget_s(key, batch, measured)
        if key[0] == "task":  # a codec call is too short to judge: a time slice lost there exceeds its budget
            budget, self.owed_s = budget + self.owed_s, 0.0  # (task calls: the compute thread's, which charges)
            self.calls += 1
            wall_budget = self.clock.wall_s(budget)
            self.overruns += 0 < wall_budget * 1.0001 < measured and self.clock.wall_s(self.slowdown) > 1.0
        begin = t0 if start is None else min(start, t0)
        wall_s = max(self.clock.wall_s(budget), measured) if math.isfinite(budget) else measured
        if (remaining := begin + wall_s - time.perf_counter()) > 0:
            time.sleep(remaining)  # the device's time, told in the host's: the clock's factor is in wall_s
        return out, wall_s / self.clock.wall_s(1.0), max(begin + wall_s, t0 + measured)

    @property
    def overrun_fraction(self) -> float:
        return self.overruns / self.calls if self.calls else 0.0
