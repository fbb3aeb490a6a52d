"""Admission controllers against a fluid queue written out here (not the runtime).

The queue: backlog W (seconds of work at the bottleneck). Each step of dt adds λ·w(T)·dt seconds of work,
w(T) = compute_fraction(T)·c0 seconds per item, and removes capacity·dt (W >= 0). At a given operating
point the cluster sustains capacity / w(T) items per second.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from mdiexit.exitprofile import ExitProfile
from mdiexit.policies.admission import (
    RateAdaptation,
    ThresholdAdaptation,
    cheapest_alike,
    feasible_ceiling,
    make_admission,
)

W_STAR = 0.3
ACC = 0.7  # met by a point in the middle of the synthetic frontier


@pytest.fixture(scope="module")
def profile() -> ExitProfile:
    rng = np.random.default_rng(0)
    k, n = 3, 400
    conf = rng.uniform(0.3, 1.0, (k, n))
    correct = rng.uniform(0, 1, (k, n)) < conf * np.linspace(0.8, 1.0, k)[:, None]
    macs = np.array([10.0, 20.0, 40.0])
    p = ExitProfile.build(conf, correct, macs, macs.sum())
    assert len(p.frontier) > 10  # enough points for threshold adaptation to choose among
    return p


def simulate(ctrl, c0: float, capacity: Callable[[float], float] = lambda t: 1.0, duration: float = 60.0,
             dt: float = 0.1, delay_steps: int = 0, noise: float = 0.0, seed: int = 1) -> np.ndarray:
    """Rows (t, rate, W, operating point, compute fraction, version). The controller sees W `delay_steps`
    steps late, times (1 + noise·N(0, 1))."""
    rng = np.random.default_rng(seed)
    w, seen, rows = 0.0, [0.0] * (delay_steps + 1), []
    for i in range(round(duration / dt)):
        t = i * dt
        ctrl.step(seen[0] * (1 + noise * rng.standard_normal()), t)
        s = ctrl.state()
        _, version = ctrl.thresholds()
        w = max(0.0, w + ctrl.rate() * s["compute_fraction"] * c0 * dt - capacity(t) * dt)
        seen = [*seen[1:], w]
        rows.append((t, ctrl.rate(), w, s["operating_point"], s["compute_fraction"], version))
    return np.array(rows)


def window(h: np.ndarray, start: float, end: float = math.inf) -> np.ndarray:
    return h[(h[:, 0] >= start) & (h[:, 0] < end)]


# ------------------------------------------------------------------ rate adaptation
@pytest.mark.parametrize("capacity_items", [30.0, 200.0, 1500.0])
def test_rate_converges_to_capacity_without_oscillating(profile, capacity_items):
    ctrl = RateAdaptation(profile, target_accuracy=ACC, target_backlog_s=W_STAR)
    c0 = 1.0 / (capacity_items * ctrl.state()["compute_fraction"])  # capacity 1 s/s -> capacity_items items/s
    h = simulate(ctrl, c0, duration=60.0)
    last = window(h, 30.0)  # settled
    mean = last[:, 1].mean()
    assert abs(mean / capacity_items - 1) < 0.10
    assert np.ptp(last[:, 1]) < 0.20 * mean
    assert abs(last[:, 2].mean() - W_STAR) < 0.1  # the backlog sits at its target
    assert h[:, 2].max() < 5 * W_STAR  # startup overshoot stays bounded


def test_rate_tracks_a_capacity_drop_and_recovery(profile):
    ctrl = RateAdaptation(profile, target_accuracy=ACC)
    c0 = 1.0 / (200.0 * ctrl.state()["compute_fraction"])
    h = simulate(ctrl, c0, capacity=lambda t: 0.5 if 40 <= t < 80 else 1.0, duration=120.0)
    for start, end, cap in [(25, 40, 200.0), (65, 80, 100.0), (105, 120, 200.0)]:
        seg = window(h, start, end)
        assert abs(seg[:, 1].mean() / cap - 1) < 0.10, (start, seg[:, 1].mean())
        assert np.ptp(seg[:, 1]) < 0.20 * seg[:, 1].mean()


def test_rate_tolerates_report_delay_and_noise(profile):
    ctrl = RateAdaptation(profile, target_accuracy=ACC)
    c0 = 1.0 / (200.0 * ctrl.state()["compute_fraction"])
    h = simulate(ctrl, c0, duration=80.0, delay_steps=5, noise=0.2)  # 0.5 s late, 20 % noise
    last = window(h, 40.0)
    assert abs(last[:, 1].mean() / 200.0 - 1) < 0.10
    assert np.ptp(last[:, 1]) < 0.5 * last[:, 1].mean()


@pytest.mark.parametrize("dt", [0.05, 0.25])
def test_rate_law_uses_elapsed_time_not_step_count(profile, dt):
    ctrl = RateAdaptation(profile, target_accuracy=ACC)
    c0 = 1.0 / (200.0 * ctrl.state()["compute_fraction"])
    h = simulate(ctrl, c0, duration=60.0, dt=dt)
    last = window(h, 30.0)
    assert abs(last[:, 1].mean() / 200.0 - 1) < 0.10
    # an idle queue for 2 s grows the rate by the same factor whatever the step period
    a, b = RateAdaptation(profile, ACC), RateAdaptation(profile, ACC)
    for i in range(21):
        a.step(0.0, i * 0.1)
    for i in range(9):
        b.step(0.0, i * 0.25)
    assert a.rate() == pytest.approx(b.rate(), rel=1e-9)
    assert a.rate() > 10.0 * 2.0**2  # ramp: at least doubling per second


def test_rate_thresholds_are_fixed_and_rate_is_clamped(profile):
    ctrl = RateAdaptation(profile, target_accuracy=ACC, min_rate=2.0, max_rate=500.0)
    want = profile.for_target(ACC)
    assert want.accuracy >= ACC + math.sqrt(ACC * (1 - ACC) / profile.items) and want != profile.frontier[-1]
    assert ctrl.thresholds() == (want.thresholds, 1)
    h = simulate(ctrl, 1e-9, duration=30.0)  # infinite capacity
    assert h[-1, 1] == pytest.approx(500.0)
    assert ctrl.thresholds() == (want.thresholds, 1)
    for i in range(2000):  # a backlog far over target for 200 s
        ctrl.step(100.0, 30.0 + i * 0.1)
    assert ctrl.rate() == pytest.approx(2.0)
    s = ctrl.state()
    assert s["operating_point"] == profile.frontier.index(want)
    assert s["accuracy"] == want.accuracy and s["max_backlog_s"] == 100.0
    assert {"rate", "thresholds", "operating_point", "max_backlog_s", "target_backlog_s"} <= set(s)


def test_rate_rejects_bad_parameters(profile):
    with pytest.raises(ValueError):
        RateAdaptation(profile, ACC, initial_rate=0.5, min_rate=1.0)
    with pytest.raises(ValueError):
        RateAdaptation(profile, ACC, target_backlog_s=0.0)


# ------------------------------------------------------------------ threshold adaptation
def test_thresholds_back_off_under_overload_and_return_when_load_drops(profile):
    rate = 100.0
    balance = 0.45  # compute fraction the cluster sustains at this rate while capacity is 1 s/s
    c0 = 1.0 / (rate * balance)
    ctrl = ThresholdAdaptation(profile, rate_per_s=rate)
    last_index = len(profile.frontier) - 1
    assert ctrl.state()["operating_point"] == last_index  # starts at the most accurate point
    h = simulate(ctrl, c0, capacity=lambda t: 1.0 if t < 90 else 3.0, duration=130.0)
    assert (h[:, 1] == rate).all()

    overloaded = window(h, 30.0, 90.0)
    cf = overloaded[:, 4]
    assert abs(cf.mean() / balance - 1) < 0.10  # on average it does exactly the work the cluster can do
    assert overloaded[:, 4].max() < profile.frontier[-1].compute_fraction  # well below the most accurate
    below = max(i for i, p in enumerate(profile.frontier) if p.compute_fraction <= balance)
    assert set(overloaded[:, 3].astype(int)) <= {below - 1, below, below + 1, below + 2}  # neighbours only
    flips = int((np.diff(overloaded[:, 3]) != 0).sum())
    assert flips <= 25  # over 60 s: at most one switch per 2.4 s on average, never every step
    dwell = np.diff(overloaded[np.flatnonzero(np.diff(overloaded[:, 3])) + 1, 0])
    assert dwell.size == 0 or dwell.min() >= 0.5
    assert abs(overloaded[:, 2].mean() - W_STAR) < 0.1

    recovered = window(h, 100.0)  # within 10 s of the capacity tripling
    assert (recovered[:, 3] == last_index).all()  # back at the most accurate point
    # every switch bumped the version, and only switches did
    changes = int((np.diff(h[:, 3]) != 0).sum())
    assert h[-1, 5] - h[0, 5] == changes


def test_thresholds_stay_put_when_the_cluster_keeps_up(profile):
    ctrl = ThresholdAdaptation(profile, 10.0)
    h = simulate(ctrl, 1.0 / 100.0, duration=30.0)  # needs at most 10 % of capacity
    assert (h[:, 3] == len(profile.frontier) - 1).all()
    assert ctrl.thresholds() == (profile.frontier[-1].thresholds, 1)


def test_thresholds_with_delay_and_noise(profile):
    ctrl = ThresholdAdaptation(profile, 100.0)
    h = simulate(ctrl, 1.0 / (100.0 * 0.6), duration=100.0, delay_steps=5, noise=0.2)
    last = window(h, 40.0)
    assert abs(last[:, 4].mean() / 0.6 - 1) < 0.10
    assert int((np.diff(last[:, 3]) != 0).sum()) <= 30


def test_thresholds_initial_compute(profile):
    ctrl = ThresholdAdaptation(profile, 50.0, initial_compute=0.4)
    want = profile.best_within_compute(0.4)
    assert ctrl.thresholds() == (want.thresholds, 1)
    assert ctrl.state()["operating_point"] == profile.frontier.index(want)


def fluid_limit(profile: ExitProfile, c0: float) -> Callable[[tuple[float, ...]], float]:
    """The fluid queue's physical limit at a threshold vector: 1 s/s of capacity over its seconds per item."""
    compute = {p.thresholds: p.compute_fraction for p in profile.frontier}
    return lambda thresholds: 1.0 / (compute[tuple(thresholds)] * c0)


@pytest.mark.parametrize("balance", [0.3, 0.45, 0.8])
def test_the_feasible_ceiling_is_the_most_accurate_point_the_rate_allows(profile, balance):
    rate, c0 = 100.0, 1.0 / (100.0 * balance)  # at this rate the cluster carries compute fractions up to balance
    calls = []
    limit = fluid_limit(profile, c0)
    ceiling = feasible_ceiling(profile, rate, lambda th: calls.append(th) or limit(th), utilisation=0.9)
    allowed = [i for i, p in enumerate(profile.frontier) if p.compute_fraction <= 0.9 * balance]
    assert ceiling == (max(allowed) if allowed else 0)
    assert len(calls) <= math.ceil(math.log2(len(profile.frontier))) + 2  # a bisection, not a scan
    assert feasible_ceiling(profile, rate, lambda th: None) == len(profile.frontier) - 1  # no plan: no bound
    assert feasible_ceiling(profile, 1e9, limit) == 0  # nothing carries it: the cheapest point


def test_bounded_threshold_adaptation_starts_within_the_bound_and_keeps_the_deadline(profile):
    """At 3x what the most accurate point can carry, the unbounded controller starts there and its backlog runs past
    1 s before it backs off; bounded by the planner's limit it starts where the queue keeps up."""
    rate, balance = 100.0, 0.3
    c0 = 1.0 / (rate * balance)
    ceiling = feasible_ceiling(profile, rate, fluid_limit(profile, c0))
    bounded = ThresholdAdaptation(profile, rate, max_index=ceiling)
    free = ThresholdAdaptation(profile, rate)
    assert bounded.state()["operating_point"] == ceiling < free.state()["operating_point"]
    h_bounded, h_free = simulate(bounded, c0, duration=60.0), simulate(free, c0, duration=60.0)
    assert h_free[:, 2].max() > 1.0 > h_bounded[:, 2].max()
    assert h_bounded[:, 3].max() <= ceiling  # never above the bound
    assert abs(window(h_bounded, 20.0)[:, 4].mean() / balance - 1) < 0.15  # and still uses what the cluster has


def test_a_point_is_worth_its_compute_only_if_it_is_right_on_more_than_a_few_more_validation_items(profile):
    top = len(profile.frontier) - 1
    chosen = cheapest_alike(profile, top, noise_items=3)
    best = profile.frontier[top].accuracy
    assert profile.frontier[chosen].accuracy >= best - 3 / profile.items
    assert all(p.accuracy < best - 3 / profile.items for p in profile.frontier[:chosen])  # the cheapest such
    assert cheapest_alike(profile, top, noise_items=0) == top
    assert cheapest_alike(profile, 0) == 0


# ------------------------------------------------------------------ factory
def test_make_admission(profile):
    r = make_admission("rate", profile, target_accuracy=ACC, initial_rate=20.0)
    assert isinstance(r, RateAdaptation) and r.rate() == pytest.approx(20.0)
    t = make_admission("thresholds", profile, rate=40.0, target_backlog_s=0.5)
    assert isinstance(t, ThresholdAdaptation) and t.rate() == 40.0 and t.target_backlog_s == 0.5
    t2 = make_admission("thresholds", profile, rate_per_s=40.0)
    assert t2.rate() == 40.0
    with pytest.raises(ValueError, match="unknown admission kind"):
        make_admission("aimd", profile)
