import itertools

import numpy as np
import pytest

from mdiexit.exitprofile import ExitProfile, enumerate_points, evaluate, outcome


def synthetic(n=400, k=3, seed=0):
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.3, 1.0, (k, n))
    correct = rng.uniform(0, 1, (k, n)) < conf * np.linspace(0.8, 1.0, k)[:, None]
    return conf, correct, np.array([10.0, 20.0, 40.0])


def brute_force(conf, correct, macs, grid, target):
    cum = np.cumsum(macs)
    best = None
    for combo in itertools.product(grid, repeat=conf.shape[0] - 1):
        p = evaluate(conf, correct, cum, cum[-1], np.array([*combo, 0.0]))
        if p.accuracy >= target and (best is None or p.compute_fraction < best.compute_fraction - 1e-12):
            best = p
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cheapest_for_accuracy_matches_brute_force(seed):
    conf, correct, macs = synthetic(seed=seed)
    grid = (0.5, 0.7, 0.85, 1.0)
    profile = ExitProfile.build(conf, correct, macs, macs.sum(), grid)
    accs = [p.accuracy for p in enumerate_points(conf, correct, np.cumsum(macs), macs.sum(), grid)]
    for target in np.linspace(min(accs), max(accs), 15):
        want = brute_force(conf, correct, macs, grid, target)
        got = profile.cheapest_for_accuracy(target)
        assert got.accuracy >= target
        assert got.compute_fraction == pytest.approx(want.compute_fraction)


def test_enumeration_agrees_with_direct_evaluation():
    conf, correct, macs = synthetic(seed=3)
    cum = np.cumsum(macs)
    for p in enumerate_points(conf, correct, cum, cum[-1], (0.6, 0.9, 1.0)):
        q = evaluate(conf, correct, cum, cum[-1], np.array(p.thresholds))
        assert p.accuracy == pytest.approx(q.accuracy) and p.compute_fraction == pytest.approx(q.compute_fraction)


def test_frontier_is_monotone_and_queries_are_consistent():
    conf, correct, macs = synthetic(seed=4)
    profile = ExitProfile.build(conf, correct, macs, macs.sum())
    comp = [p.compute_fraction for p in profile.frontier]
    acc = [p.accuracy for p in profile.frontier]
    assert comp == sorted(comp) and acc == sorted(acc) and len(set(acc)) == len(acc)
    mid = profile.frontier[len(profile.frontier) // 2]
    assert profile.best_within_compute(mid.compute_fraction) == mid
    assert profile.cheapest_for_accuracy(2.0) == profile.frontier[-1]  # unreachable target -> most accurate
    assert ExitProfile.from_json(profile.to_json()).frontier == profile.frontier


def test_threshold_one_disables_an_exit_and_last_always_exits():
    conf = np.array([[1.0, 0.2], [1.0, 0.1]])
    assert outcome(conf, np.array([1.0, 0.0])).tolist() == [1, 1]
    assert outcome(conf, np.array([0.9, 0.0])).tolist() == [0, 1]


def test_exit_mix_is_exact_when_confidence_is_nested():
    """Items equally confident at every exit (an easy item is easy everywhere): the estimate from the per-exit
    marginals is the exact mix that `outcome` gives on the items."""
    rng = np.random.default_rng(7)
    base = rng.uniform(0.3, 1.0, 500)
    conf = np.stack([base, base, base])
    correct = rng.uniform(0, 1, conf.shape) < 0.9
    grid = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    profile = ExitProfile.build(conf, correct, np.array([1.0, 2.0, 3.0]), 6.0, grid)
    for thresholds in [(0.9, 0.6, 0.0), (0.5, 0.9, 0.0), (1.0, 0.7, 0.0), (0.8, 1.0, 0.0)]:
        exact = np.bincount(outcome(conf, np.array(thresholds)), minlength=3) / conf.shape[1]
        assert profile.exit_mix(thresholds) == pytest.approx(exact)


def test_exit_mix_interpolates_off_the_grid_and_sums_to_one():
    conf, correct, macs = synthetic(seed=4)
    profile = ExitProfile.build(conf, correct, macs, macs.sum(), (0.5, 0.7, 1.0))
    mix = profile.exit_mix((0.6, 0.85, 0.0))
    assert sum(mix) == pytest.approx(1.0) and min(mix) >= 0
    assert mix[0] == pytest.approx((profile.exit_fraction[0][0] + profile.exit_fraction[0][1]) / 2)
    assert profile.exit_mix((1.0, 1.0, 0.0)) == [0.0, 0.0, 1.0]


@pytest.mark.parametrize("n", [400, 777, 6000])
def test_a_profile_knows_how_many_items_it_was_measured_on_even_when_written_without_the_count(n):
    conf, correct, macs = synthetic(n=n)
    profile = ExitProfile.build(conf, correct, macs, macs.sum())
    assert profile.items == n
    written = profile.to_json()
    assert ExitProfile.from_json(written).items == n
    del written["items"]  # a package exported before the count was stored
    assert ExitProfile.from_json(written).items == n


def test_a_target_is_met_with_a_margin_of_the_validation_estimates_standard_error():
    conf, correct, macs = synthetic(n=2000)
    profile = ExitProfile.build(conf, correct, macs, macs.sum())
    target = 0.65  # below the most accurate point's accuracy by more than the margin
    se = (target * (1 - target) / 2000) ** 0.5
    assert profile.frontier[-1].accuracy > target + se
    chosen = profile.for_target(target)
    assert chosen.accuracy >= target + se
    assert chosen == profile.cheapest_for_accuracy(target + se)
    assert chosen.compute_fraction >= profile.cheapest_for_accuracy(target).compute_fraction
    assert profile.for_target(target, z=0.0) == profile.cheapest_for_accuracy(target)
