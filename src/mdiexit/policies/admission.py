"""Admission control at the source (DESIGN §3.3). Pure code: time is always an argument, nothing is read
from the clock, and nothing heavier than numpy is imported.

Both controllers steer one log-scale quantity x with the same PI law on the largest backlog W (seconds of
queued compute) the source observes, measured against a target W*. Each step, with dt the time elapsed
since the previous step (so the law does not depend on the step period; dt is capped at 1 s):

    Wf  <- Wf + (1 - exp(-dt / smooth_s)) * (W - Wf)    exponential filter on the reports
    e    = W* - Wf                                      (s; > 0 while the cluster keeps up)
    e_I  = clip(e, -i_clip·W*, W*)                       integral error
    e_P  = clip(e, -p_clip·W*, W*)                       proportional error
    x   <- x + ki·e_I·dt + kp·(e_P - e_P,prev)          PI in velocity form
             + ramp·dt   while Wf < ramp_below·W*       slow start: an idle queue says nothing about capacity
    x    = clamp(x, x_min, x_max)                       clamping the state is the anti-windup

Rate adaptation steers x = log λ; threshold adaptation steers x = log w (expected compute per item). The
plant is the same for both: while the bottleneck queue is busy, dW/dt = λ·w/μ - 1, which near the
balance point λ·w = μ is dW/dt ≈ y with y = x - x_balance, whatever the cluster's capacity μ. So the
loop is scale-free: y'' + kp·y' + ki·y = 0, natural frequency ω = √ki and damping ζ = kp / (2√ki).
Both default gain pairs are critically damped (ζ ≈ 1); ω is kept low enough (0.55 and 0.32 rad/s) that
half a second of report delay plus 20 % noise on W does not destabilise the loop. Clipping the negative
error keeps a burst (W >> W*) from cutting x without bound: the cut is proportional to the excess, at
most kp·(p_clip + 1)·W* at once, plus ki·i_clip·W* per second while the excess lasts.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from mdiexit.exitprofile import ExitProfile, OperatingPoint


@dataclass
class LogPI:
    """The shared PI law above on a log-scale state ``x`` (see the module docstring)."""

    x: float
    x_min: float
    x_max: float
    target_backlog_s: float
    ki: float
    kp: float
    i_clip: float  # the integral's error is clipped to >= -i_clip (s): a burst must not wind it to the floor
    p_clip: float  # the proportional error is clipped to >= -p_clip (s)
    ramp: float = 0.0  # d x / dt (1/s) added while W < ramp_below * W*
    ramp_below: float = 0.1
    smooth_s: float = 0.0  # time constant (s) of an exponential filter on W; 0: none
    backlog_s: float = 0.0  # the filtered W
    last_t: float | None = None
    last_ep: float | None = None

    def step(self, backlog_s: float, t: float) -> None:
        w_star = self.target_backlog_s
        backlog_s = max(backlog_s, 0.0)
        if self.last_t is None or self.last_ep is None:
            dt = 0.0
            self.backlog_s = backlog_s
        else:
            dt = min(max(t - self.last_t, 0.0), 1.0)  # a stalled source does not get a giant step
            a = 1.0 if self.smooth_s <= 0 else 1.0 - math.exp(-dt / self.smooth_s)
            self.backlog_s += a * (backlog_s - self.backlog_s)
        backlog_s = self.backlog_s
        e = w_star - backlog_s
        ep = min(max(e, -self.p_clip), w_star)
        dep = 0.0 if self.last_ep is None else ep - self.last_ep
        dx = self.ki * min(max(e, -self.i_clip), w_star) * dt + self.kp * dep
        if backlog_s < self.ramp_below * w_star:
            dx += self.ramp * dt
        self.x = min(max(self.x + dx, self.x_min), self.x_max)
        self.last_t, self.last_ep = t, ep


def _index_of(profile: ExitProfile, point: OperatingPoint) -> int:
    for i, p in enumerate(profile.frontier):
        if p == point:
            return i
    return -1


@dataclass
class RateAdaptation:
    """Fixed accuracy, maximum throughput: the cheapest frontier point meeting ``target_accuracy`` on new items
    (ExitProfile.for_target: its validation accuracy clears the target by a standard error; fixed,
    version 1), and λ steered by the PI law of the module docstring on x = log λ, clamped to
    [min_rate, max_rate]. Defaults: ki = 0.1 s⁻², kp = 0.63 s⁻¹ (ω ≈ 0.32 rad/s, ζ ≈ 1), smooth_s = 0.5 s,
    errors clipped at -2 W* (integral) and -3 W* (proportional): a backlog far above target cuts λ at once
    by up to exp(-0.63 · 4 · 0.3) ≈ 0.47 and then by exp(-0.1 · 0.6) ≈ 0.94 per second. (ki = 0.3, kp = 1.1
    settle faster on an ideal queue, but on the emulated cluster, whose backlog reports lag, they made λ
    swing ±18 % with a 10 s period; these gains halve the swing.) While the queue is
    idle (W < 0.1 W*) λ also grows by ``ramp`` = ln 2 per second in log terms (doubling every second), on
    top of the integral's ki·W*; 10/s reaches 1500/s in about 6 s.
    """

    profile: ExitProfile
    target_accuracy: float
    target_backlog_s: float = 0.3
    initial_rate: float = 10.0
    min_rate: float = 1.0
    max_rate: float = 2000.0
    ki: float = 0.1  # 1/s² per second of backlog error: ω = √ki ≈ 0.32 rad/s
    kp: float = 0.63  # 1/s: ζ = kp / (2 √ki) ≈ 1
    ramp: float = math.log(2.0)  # slow start: log-rate growth per second while the queue is idle
    ramp_below: float = 0.1  # ... i.e. while W < ramp_below · W*
    smooth_s: float = 0.5  # time constant of the exponential filter on W (s)
    i_clip: float = 2.0  # integral error clipped to >= -i_clip · W*
    p_clip: float = 3.0  # proportional error clipped to >= -p_clip · W*
    _point: OperatingPoint = field(init=False)
    _pi: LogPI = field(init=False)
    _backlog: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        if not 0 < self.min_rate <= self.initial_rate <= self.max_rate:
            raise ValueError("need 0 < min_rate <= initial_rate <= max_rate")
        if self.target_backlog_s <= 0:
            raise ValueError("target_backlog_s must be positive")
        w = self.target_backlog_s
        self._point = self.profile.for_target(self.target_accuracy)
        self._pi = LogPI(math.log(self.initial_rate), math.log(self.min_rate), math.log(self.max_rate), w,
                         self.ki, self.kp, i_clip=self.i_clip * w, p_clip=self.p_clip * w, ramp=self.ramp,
                         ramp_below=self.ramp_below, smooth_s=self.smooth_s)

    def rate(self) -> float:
        return math.exp(self._pi.x)

    def thresholds(self) -> tuple[tuple[float, ...], int]:
        return self._point.thresholds, 1

    def step(self, max_backlog_s: float, t: float) -> None:
        self._backlog = max_backlog_s
        self._pi.step(max_backlog_s, t)

    def state(self) -> dict:
        """One timeline row's worth of admission state."""
        p = self._point
        return {"rate": self.rate(), "thresholds": p.thresholds, "version": 1,
                "operating_point": _index_of(self.profile, p), "accuracy": p.accuracy,
                "compute_fraction": p.compute_fraction, "max_backlog_s": self._backlog,
                "target_backlog_s": self.target_backlog_s}


# With a deadline, the backlog the controllers aim for is at most this share of it: the rest is for the links, the
# later tasks and the result's way back (at the 1 s deadline of the paper's experiment 2 it is the default 0.3 s).
DEADLINE_SHARE_OF_BACKLOG = 0.3
# A more accurate frontier point is worth its compute only if it is right on at least this many more validation items
# than a cheaper one: fewer is noise (near the top of the shipped profiles, 2-3 of 6,000 items bought 50-70 % more
# compute per item, and so longer queues and more deadline misses on the same devices).
NOISE_ITEMS = 3
# At a fixed rate, the thresholds may use at most this share of the cluster's physical limit at their exit mix (the
# planner's, one item at a time): a queue loaded closer to its limit waits long enough to miss any deadline.
FEASIBLE_UTILISATION = 0.9


def feasible_ceiling(profile: ExitProfile, rate_per_s: float, limit_at: Callable[[tuple[float, ...]], float | None],
                     utilisation: float = FEASIBLE_UTILISATION) -> int:
    """Index of the most accurate frontier point whose physical limit (``limit_at(thresholds)``, items/s; None:
    unknown, no bound) carries ``rate_per_s`` at ``utilisation``; 0 when none does. The limit falls as the compute
    per item rises along the frontier, so a bisection asks for about log2(points) limits."""
    def carries(i: int) -> bool:
        limit = limit_at(profile.frontier[i].thresholds)
        return limit is None or limit * utilisation >= rate_per_s

    lo, hi = 0, len(profile.frontier) - 1
    if carries(hi):
        return hi
    if not carries(lo):
        return lo
    while hi - lo > 1:  # carries(lo) and not carries(hi)
        mid = (lo + hi) // 2
        if carries(mid):
            lo = mid
        else:
            hi = mid
    return lo


def cheapest_alike(profile: ExitProfile, index: int, noise_items: int = NOISE_ITEMS) -> int:
    """The cheapest frontier point at most ``noise_items`` validation items less accurate than point ``index``
    (no profile item count: ``index`` itself)."""
    if not profile.items:
        return index
    floor = profile.frontier[index].accuracy - noise_items / profile.items
    return next(i for i in range(index + 1) if profile.frontier[i].accuracy >= floor - 1e-12)


@dataclass
class ThresholdAdaptation:
    """Fixed rate, maximum accuracy: one operating point along ``profile.frontier`` (0 = cheapest, last =
    most accurate), chosen from a continuous log-compute target z steered by the PI law of the module
    docstring (z clamped to [log c_0 - h, log c_last + h]). Defaults: ki = 0.1 s⁻², kp = 0.63 s⁻¹
    (ω ≈ 0.32 rad/s, ζ ≈ 1), smooth_s = 0.5 s, h = 0.1, clips as for the rate, and a gentle slow start
    (ramp = 0.1 per second while W < 0.1 W*) so an idle cluster regains accuracy in seconds.

    Quantisation with hysteresis h: the current point p (compute c_p) is kept while
    log c_p - h <= z < log c_{p+1} + h. Above that band the point moves up to the most accurate one with
    log c <= z - h; below it, down to the most accurate one with log c <= z + h. When the balancing compute
    falls between two frontier points no single point can hold W at W*, so the point alternates between
    those neighbours (their time-average is the balancing compute). The band (gap + 2h, i.e. a swing of
    about 2h/kp ≈ 0.3 s in W) sets the period: one switch every few seconds, never every step; a wider
    band means fewer switches and larger backlog swings. Every switch increments the version.

    Start: the most accurate point whose compute is <= ``initial_compute`` (default None: the most accurate
    point), so a cluster that keeps up never loses accuracy and an overloaded one backs off within seconds.

    ``max_index`` bounds the points it may take (:func:`feasible_ceiling`: the planner's limit at each point's exit
    mix against the rate), and it starts no higher. Started at a point the cluster cannot carry, the controller
    hardly moves: the admission gate holds the backlog near its cap, so the error stays small, and for many seconds
    items wait at the gate or are rejected (edge4 at 3x mdi's capacity: 0.77 correct within 1 s, against 0.93).
    """

    profile: ExitProfile
    rate_per_s: float
    target_backlog_s: float = 0.3
    initial_compute: float | None = None
    ki: float = 0.1  # 1/s² per second of backlog error: ω = √ki ≈ 0.32 rad/s
    kp: float = 0.63  # 1/s: ζ = kp / (2 √ki) ≈ 1
    hysteresis: float = 0.1  # h, in log-compute (≈ 10 %)
    smooth_s: float = 0.5  # time constant of the exponential filter on W (s)
    i_clip: float = 2.0  # integral error clipped to >= -i_clip · W*
    p_clip: float = 3.0  # proportional error clipped to >= -p_clip · W*
    ramp: float = 0.1  # log-compute growth per second while the queue is idle
    ramp_below: float = 0.1  # ... i.e. while W < ramp_below · W*
    max_index: int | None = None  # the most accurate point allowed (None: the last)
    _index: int = field(init=False)
    _version: int = field(init=False, default=1)
    _pi: LogPI = field(init=False)
    _backlog: float = field(init=False, default=0.0)
    _log_c: list[float] = field(init=False)

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0 or self.target_backlog_s <= 0:
            raise ValueError("rate_per_s and target_backlog_s must be positive")
        if not self.profile.frontier:
            raise ValueError("the exit profile has an empty frontier")
        self._log_c = [math.log(max(p.compute_fraction, 1e-12)) for p in self.profile.frontier]
        top = len(self._log_c) - 1 if self.max_index is None else min(max(self.max_index, 0), len(self._log_c) - 1)
        self._log_c = self._log_c[:top + 1]
        h, w = self.hysteresis, self.target_backlog_s
        c0 = self.profile.frontier[top].compute_fraction if self.initial_compute is None else self.initial_compute
        self._index = self._best_within(math.log(max(c0, 1e-12)))
        self._pi = LogPI(self._log_c[self._index], self._log_c[0] - h, self._log_c[-1] + h, w,
                         self.ki, self.kp, i_clip=self.i_clip * w, p_clip=self.p_clip * w, ramp=self.ramp,
                         ramp_below=self.ramp_below, smooth_s=self.smooth_s)

    def _best_within(self, log_c: float) -> int:
        """Index of the most accurate point whose log-compute is <= log_c (0 if none is)."""
        return max(bisect.bisect_right(self._log_c, log_c) - 1, 0)

    def rate(self) -> float:
        return self.rate_per_s

    def thresholds(self) -> tuple[tuple[float, ...], int]:
        return self.profile.frontier[self._index].thresholds, self._version

    @property
    def operating_point(self) -> int:
        return self._index

    def step(self, max_backlog_s: float, t: float) -> None:
        self._backlog = max_backlog_s
        self._pi.step(max_backlog_s, t)
        z, h, i = self._pi.x, self.hysteresis, self._index
        new = i
        if i + 1 < len(self._log_c) and z >= self._log_c[i + 1] + h:
            new = self._best_within(z - h)
        elif z < self._log_c[i] - h:
            new = self._best_within(z + h)
        if new != i:
            self._index = new
            self._version += 1

    def state(self) -> dict:
        """One timeline row's worth of admission state."""
        p = self.profile.frontier[self._index]
        return {"rate": self.rate_per_s, "thresholds": p.thresholds, "version": self._version,
                "operating_point": self._index, "accuracy": p.accuracy, "compute_fraction": p.compute_fraction,
                "max_backlog_s": self._backlog, "target_backlog_s": self.target_backlog_s,
                "log_compute_target": self._pi.x}


def make_admission(kind: str, profile: ExitProfile, **params) -> RateAdaptation | ThresholdAdaptation:
    """``kind`` "rate" -> RateAdaptation(profile, **params) (needs target_accuracy); "thresholds" ->
    ThresholdAdaptation(profile, **params) (needs rate_per_s, or ``rate`` as an alias)."""
    if kind == "rate":
        return RateAdaptation(profile, **params)
    if kind == "thresholds":
        if "rate" in params:
            params["rate_per_s"] = params.pop("rate")
        return ThresholdAdaptation(profile, **params)
    raise ValueError(f"unknown admission kind {kind!r}: expected 'rate' or 'thresholds'")
