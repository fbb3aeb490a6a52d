from mdiexit.policies.gate import DEADLINE, OVERLOADED, AdmissionGate


def test_releases_at_the_token_rate_while_the_cluster_keeps_up():
    g = AdmissionGate(max_backlog_s=1.0, max_wait_s=10.0)
    for i in range(10):
        assert g.offer(i, 0.0, rate=100.0) is None
    out, expired = g.release(0.0, 100.0, backlog_s=0.0)
    assert [p.key for p in out] == [0] and not expired  # one token to start
    out, _ = g.release(0.05, 100.0, backlog_s=0.0)  # 5 more tokens accrued (the bank holds up to 10)
    assert [p.key for p in out] == [1, 2, 3, 4, 5]
    out, _ = g.release(0.06, 100.0, backlog_s=0.0)
    assert [p.key for p in out] == [6]


def test_a_stream_at_the_token_rate_loses_nothing_to_a_late_release_loop():
    import random

    rng = random.Random(0)
    g = AdmissionGate(max_backlog_s=1.0, max_wait_s=10.0)
    rate, released, t = 20.0, 0, 0.0
    for i in range(400):  # arrivals exactly 1/rate apart; the loop wakes up to 10 ms late
        t = i / rate
        g.offer(i, t, rate)
        released += len(g.release(t + rng.uniform(0.0, 0.01), rate, backlog_s=0.0)[0])
    assert released >= 399 and not g.rejected


def test_backlog_cap_and_window_hold_the_queue():
    g = AdmissionGate(max_backlog_s=0.5, max_wait_s=10.0)
    for i in range(3):
        g.offer(i, 0.0, rate=1000.0)
    assert g.release(0.0, 1000.0, backlog_s=0.6)[0] == []
    assert g.release(0.01, 1000.0, backlog_s=0.1, in_flight=4, window=4)[0] == []
    assert len(g.release(0.02, 1000.0, backlog_s=0.1, in_flight=3, window=4)[0]) == 1


def test_rejects_at_once_when_the_wait_would_be_too_long():
    g = AdmissionGate(max_backlog_s=0.5, max_wait_s=0.1)
    results = [g.offer(i, 0.0, rate=50.0) for i in range(10)]  # 50/s drains 5 items in 0.1 s
    assert results[:6] == [None] * 6
    assert set(results[6:]) == {OVERLOADED}
    assert g.rejected[OVERLOADED] == 4 and len(g.queue) == 6


def test_drain_rate_is_measured_after_the_first_second():
    g = AdmissionGate(max_backlog_s=0.5, max_wait_s=0.5)
    g.offer("a", 0.0, rate=1000.0)
    g.release(0.0, 1000.0, 0.0)
    # the cluster stalls (backlog above the cap): nothing leaves, so nothing more may wait
    for k in range(5):
        g.offer(k, 1.5, rate=1000.0)
        g.release(1.5, 1000.0, backlog_s=0.9)
    assert g.rejected[OVERLOADED] == 4 and len(g.queue) == 1


def test_deadline_rejection_and_expiry():
    g = AdmissionGate(max_backlog_s=0.5, max_wait_s=1.0)
    assert g.offer("late", 0.0, rate=10.0, deadline=0.05, latency_s=0.1) == DEADLINE
    assert g.offer("ok", 0.0, rate=10.0, deadline=0.5, latency_s=0.1) is None
    assert g.offer("free", 0.0, rate=10.0) is None
    out, expired = g.release(0.6, 10.0, backlog_s=0.9)  # held by the backlog past its deadline
    assert out == [] and [p.key for p in expired] == ["ok"]
    assert g.expired == 1 and [p.key for p in g.queue] == ["free"]


def test_every_offer_is_accounted_for():
    g = AdmissionGate(max_backlog_s=0.3, max_wait_s=0.05, max_items=20)
    released = expired = 0
    t = 0.0
    for i in range(2000):
        t = i * 0.001
        g.offer(i, t, rate=200.0, deadline=t + 0.2 if i % 3 == 0 else None)
        out, gone = g.release(t, 200.0, backlog_s=0.4 if (i // 100) % 2 else 0.0)
        released += len(out)
        expired += len(gone)
    assert released == g.released and expired == g.expired
    assert g.offered == released + expired + sum(g.rejected.values()) + len(g.queue)
    assert len(g.take_all()) + released + expired + sum(g.rejected.values()) == 2000


def test_a_burst_on_an_idle_gate_is_queued_up_to_what_the_rate_drains_within_the_wait():
    """An idle service released nothing in the last second because nothing was offered: a burst is judged by what
    the cluster takes (λ), so the part of it that λ drains within max_wait waits, and only the rest is refused."""
    g = AdmissionGate(max_backlog_s=0.5, max_wait_s=0.25)
    g.offer("early", 0.0, rate=400.0)
    g.release(0.0, 400.0, backlog_s=0.0)
    answers = [g.offer(k, 10.0, rate=400.0) for k in range(150)]  # 10 s later, all at once
    queued = answers.count(None)
    assert queued == 101  # 100 items drain in 0.25 s at 400/s; the 101st is judged while 100 wait
    assert answers[queued:] == [OVERLOADED] * (150 - queued)


def test_a_queue_busy_for_a_second_is_judged_by_what_it_really_drained():
    g = AdmissionGate(max_backlog_s=0.5, max_wait_s=0.25)
    t = 0.0
    while t < 2.0:  # offered 200/s, released at 50/s: the queue never empties
        for _ in range(20):
            g.offer(t, t, rate=50.0)
        g.release(t, 50.0, backlog_s=0.0)
        t += 0.1
    assert g.drain_rate(t, 1000.0) <= 60.0  # measured, not the policy's λ
    assert g.rejected[OVERLOADED] > 0


def test_a_stream_is_not_refused_in_its_first_second_while_the_window_is_still_small():
    """The in-flight window starts small (it follows the throughput, not yet measured) and the queue has released
    little yet: the first second is judged by λ, not by those few releases."""
    g = AdmissionGate(max_backlog_s=0.5, max_wait_s=0.25)
    released: list[float] = []
    t, dt, rate = 0.0, 0.01, 600.0
    while t < 1.0:
        for _ in range(6):  # 600 items/s
            assert g.offer(t, t, rate=rate) is None
        in_flight = sum(1 for r in released if r > t - 0.1)  # each item takes 100 ms
        window = 40.0 if t < 0.3 else 1000.0  # the window opens as the throughput is measured
        out, _ = g.release(t, rate, backlog_s=0.0, in_flight=in_flight, window=window)
        released += [t] * len(out)
        t += dt
    assert g.rejected[OVERLOADED] == 0


def test_shedding_says_in_advance_what_the_next_offer_would_hear():
    g = AdmissionGate(max_wait_s=0.1)
    t = 0.0
    assert not g.shedding(t, rate=10.0)  # empty: anything is queued
    answers = []
    for i in range(5):
        predicted = g.shedding(t, rate=10.0)
        answers.append((predicted, g.offer(i, t, rate=10.0)))
    assert all((why == OVERLOADED) == predicted for predicted, why in answers)
    assert answers[0] == (False, None) and answers[-1] == (True, OVERLOADED)
