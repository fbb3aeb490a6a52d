import numpy as np
import pytest

from mdiexit.runtime.ledger import LATENCY_SAMPLE, MAX_ATTEMPTS, Ledger, percentile


def test_each_item_settles_once_result_expired_or_failed():
    led = Ledger()
    for i in range(3):
        led.admit(i, 0.0, truth=1, deadline=1.0 if i == 1 else None)
    assert led.complete(0, 1, 2, 0.9, "w1", 0.5)
    assert not led.complete(0, 1, 2, 0.9, "w1", 0.6)  # the same attempt twice: a duplicate
    assert led.past_deadline(1.5) == [1] and led.expire(1, 1.5)
    assert not led.complete(1, 1, 1, 0.9, "w2", 1.6)  # too late: dropped, counted redundant
    for _ in range(MAX_ATTEMPTS - 1):
        assert led.retry(2, 2.0, "node down") is not None
    assert led.retry(2, 3.0, "node down") is None  # out of attempts: failed, with the reason
    assert (led.completed, led.expired, led.failed, led.duplicates, led.redundant) == (1, 1, 1, 1, 1)
    assert led.settled == led.admitted == 3 and not led.in_flight
    outcomes = {i: r.outcome for i, r in led.take_settled()}
    assert outcomes == {0: "result", 1: "expired", 2: "failed"}
    assert "node down" in led.records[2].failed and led.correct == 1 and led.exit_counts[2] == 1


def test_a_result_after_the_deadline_counts_as_expired():
    led = Ledger()
    led.admit(0, 0.0, truth=3, deadline=0.2)
    assert not led.complete(0, 3, 1, 0.99, "w1", 0.3)
    assert led.expired == 1 and led.completed == 0 and led.records[0].outcome == "expired"


def test_a_service_forgets_settled_items_but_still_recognises_late_results():
    led = Ledger(keep_records=False)
    for i in range(100):
        led.admit(i, 0.0, truth=0, key=("client", i))
        led.complete(i, 0, 1, 0.9, "w1", 0.1)
    taken = led.take_settled()
    assert [r.key for _, r in taken] == [("client", i) for i in range(100)]
    assert not led.records  # nothing kept once answered
    assert led.expects(5) and not led.expects(100)
    assert not led.complete(5, 0, 1, 0.9, "w2", 0.2)
    assert led.redundant == 1 and led.unknown == 0 and led.completed == 100


def test_recent_latency_percentiles_follow_the_window():
    led = Ledger()
    assert led.recent_latency_s() == 0.0
    for i, latency in enumerate([0.1, 0.2, 0.3, 0.4]):
        led.admit(i, 0.0, truth=1)
        led.complete(i, 1, 1, 0.9, "w1", latency)
    assert led.recent_latency_s(50) == pytest.approx(0.25) and led.recent_latency_s(100) == pytest.approx(0.4)
    led.admit(4, 1.0, truth=1)
    led.complete(4, 1, 1, 0.9, "w1", 3.0)  # a new result: the sorted window is made again
    assert led.recent_latency_s(100) == pytest.approx(2.0)
    led.window(3.0, 1.5)  # forgets the results done before 1.5 s
    assert led.recent_latency_s(50) == pytest.approx(2.0)


def test_recent_latency_percentiles_are_of_the_latest_results_at_most_a_sample():
    led = Ledger()
    n = LATENCY_SAMPLE
    for i in range(2 * n):  # the older half took 1 s, the newer 2 s: all within one window
        led.admit(i, 0.0, truth=1)
        led.complete(i, 1, 1, 0.9, "w1", 1.0 if i < n else 2.0)
    assert len(led.recent) == 2 * n
    assert led.recent_latency_s(0) == pytest.approx(2.0)  # the oldest results are not in the sample


def test_the_window_counts_the_correct_results_it_holds():
    """window() keeps a running count: results that leave the window leave the count too."""
    led = Ledger()
    for i in range(10):
        led.admit(i, float(i), truth=i % 2)
        led.complete(i, 0, 1, 0.9, "n", float(i) + 0.5, 0)  # label 0: correct for the even items
    assert led.window(9.5, 100.0) == (10 / 100.0, 0.5)
    assert led.window(9.5, 4.0) == (5 / 4.0, 2 / 5)  # results at 5.5 .. 9.5: items 6 and 8 correct
    assert led.window(9.5, 1.5) == (2 / 1.5, 0.5)  # 8.5 (correct) and 9.5
    assert led.recent_correct == 1


def test_percentile_interpolates_as_numpy_does():
    rng = np.random.default_rng(5)
    for n in (1, 2, 3, 10, 1377):
        ordered = sorted(rng.exponential(size=n).tolist())
        for q in (0, 5, 50, 95, 100):
            assert percentile(ordered, q) == pytest.approx(float(np.percentile(ordered, q)), rel=1e-12)
