import pytest

from mdiexit.bench.ratesearch import Criterion, search_rate


def fake_cluster(capacity: float, accuracy: float = 0.9):
    """A queue that keeps up below its capacity and falls behind (with growing latency) above it."""
    def probe(rate: float) -> dict:
        thr = min(rate, capacity)
        p95 = 50.0 if rate <= capacity else 50.0 + 40000.0 * (rate - capacity) / capacity
        return {"throughput_per_s": thr, "latency_ms": {"p95": p95}, "accuracy": accuracy, "lost": 0,
                "duplicates": 0}
    return probe


@pytest.mark.parametrize("capacity, start", [(37.0, 10.0), (37.0, 500.0), (900.0, 20.0), (3.0, 50.0)])
def test_search_finds_capacity_within_the_bisection_resolution(capacity, start):
    res = search_rate(fake_cluster(capacity), Criterion(0.8), start, refine_steps=4)
    assert res.best_rate is not None
    assert 0.9 * capacity <= res.best_rate <= capacity * 1.03
    assert all(rate <= capacity * 1.03 for rate, good, _ in res.probes if good)
    assert all(rate >= capacity for rate, good, _ in res.probes if not good)


def test_accuracy_below_target_is_never_sustainable():
    res = search_rate(fake_cluster(100.0, accuracy=0.7), Criterion(0.8), 10.0)
    assert res.best_rate is None and res.best is None and len(res.probes) >= 2


def test_lost_items_make_a_probe_fail():
    def probe(rate):
        return {"throughput_per_s": rate, "latency_ms": {"p95": 10.0}, "accuracy": 1.0, "lost": 1, "duplicates": 0}
    assert search_rate(probe, Criterion(0.5), 10.0, min_rate=5.0).best_rate is None


def test_one_bad_probe_does_not_turn_the_search_back():
    good = fake_cluster(100.0)
    flaky = {"done": False}

    def probe(rate):
        if rate == 20.0 and not flaky["done"]:  # one transient failure at 20/s
            flaky["done"] = True
            return {**good(rate), "throughput_per_s": 0.85 * rate}  # a near miss
        return good(rate)

    res = search_rate(probe, Criterion(0.8), 10.0, refine_steps=3)
    assert res.best_rate is not None and res.best_rate > 50.0
    assert [r for r, ok, _ in res.probes if r == 20.0] == [20.0, 20.0]
    assert res.decided.startswith("sustainable at") and "confirmed" in res.decided
    unconfirmed = search_rate(lambda r: probe(r) if r != 20.0 else {**good(r), "throughput_per_s": 0.85 * r},
                              Criterion(0.8), 10.0, confirm=False)
    assert unconfirmed.best_rate < 20.0  # without confirmation, the one bad probe caps the search


def test_a_clear_failure_is_not_probed_twice():
    res = search_rate(fake_cluster(30.0), Criterion(0.8), 100.0, refine_steps=0)
    assert [r for r, ok, _ in res.probes if r == 100.0] == [100.0]  # 30 % kept up with: no second probe


def test_the_bracket_ends_as_wide_as_bracket_width_says():
    from mdiexit.bench.ratesearch import bracket_width

    res = search_rate(fake_cluster(37.0), Criterion(0.8), 10.0, refine_steps=4)
    lowest_failing = min(rate for rate, good, _ in res.probes if not good)
    assert lowest_failing / res.best_rate == pytest.approx(1 + bracket_width(4))
    assert bracket_width(2) == pytest.approx(2 ** 0.25 - 1)  # 19 %: the previous default


def test_a_collapse_below_what_a_lower_rate_sustained_is_probed_again():
    """A probe that delivers far less than a lower rate already sustained did not saturate the cluster: it
    collapsed, and one such probe must not end the search a step low."""
    good = fake_cluster(150.0)
    first = {"done": False}

    def probe(rate):
        if rate == 80.0 and not first["done"]:
            first["done"] = True
            return {**good(rate), "throughput_per_s": 14.0, "latency_ms": {"p95": 2600.0}}
        return good(rate)

    res = search_rate(probe, Criterion(0.8), 10.0, refine_steps=3)
    assert [r for r, _, _ in res.probes if r == 80.0] == [80.0, 80.0]
    assert res.best_rate > 100.0 and "1 collapsed probe run again" in res.decided
    # a failure that keeps the throughput a lower rate sustained is saturation, not a collapse: probed once
    sat = search_rate(fake_cluster(30.0), Criterion(0.8), 25.0, refine_steps=0)  # 50/s: 30 kept up with
    assert [r for r, _, _ in sat.probes if r == 50.0] == [50.0] and "collapsed" not in sat.decided
