"""The one clock (DESIGN §4): every part of a node asks the clock it was given for the time and to wait, and
nothing else reads or sleeps on real time. In processes it is the wall clock with a factor; in the simulator,
SimPy's environment (sim.world.SimClock). Standard library only.

The factor is time dilation: ``WallClock(2)`` runs every timer, wait, device and link of the emulated cluster
twice as slowly, so that the host's own additions to each message (a thread that wakes late, the GIL, ZeroMQ's
transit), which do not stretch, count half as much, and every figure is already in the cluster's own time (Gupta
et al., "To Infinity and Beyond: Time-Warped Network Emulation", NSDI 2006). The price: k times the wall time.

    clock = WallClock(2.0)
    t = clock.now()          # cluster seconds (monotonic; the same in every process of the host)
    clock.sleep(0.010)       # 10 ms of the cluster's time: 20 ms of the host's
    clock.wall_s(0.010)      # 0.02: what a wait in the host's own terms (poll, Event.wait) must be given
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds in the cluster's own time (an arbitrary origin, the same for every node of a run)."""
        ...

    def wall_s(self, s: float) -> float:
        """The host seconds that ``s`` seconds of the cluster's time take."""
        ...


@dataclass(frozen=True)
class WallClock:
    """The host's monotonic clock, slowed ``factor`` times (1: real time)."""

    factor: float = 1.0

    def __post_init__(self) -> None:
        if not self.factor >= 1.0:
            raise ValueError(f"a clock's dilation must be >= 1 (1 = none), got {self.factor:g}")

    def now(self) -> float:
        return time.monotonic() / self.factor

    def wall_s(self, s: float) -> float:
        return s * self.factor

    def sleep(self, s: float) -> None:
        if s > 0:
            time.sleep(s * self.factor)


REAL_TIME = WallClock()
