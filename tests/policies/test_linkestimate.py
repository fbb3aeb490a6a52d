"""The link estimator against a simulated FIFO uplink: exact delivery times, receivers that acknowledge in
their heartbeats on a clock of their own, and the sender's events in time order."""

from __future__ import annotations

import bisect
import math
import random
import zlib

import pytest

from mdiexit.policies.linkestimate import EstimatorConfig, LinkEstimator

MBIT = 1e6


def simulate(estimators: dict[str, LinkEstimator], sends: list[tuple[float, int, str]], until: float,
             rate_at=lambda t: 10 * MBIT, latency: float = 0.005, heartbeat: float = 0.05, jitter: float = 0.0,
             seed: int = 0, acks: bool = True, ack_delay: float = 0.0,
             states_queue: bool = False, stamp_skew: float = 0.0) -> list[tuple[float, dict[str, float | None]]]:
    """Drive ``estimators`` (one per link) through ``sends`` (time, bytes, link) on one FIFO egress draining at
    ``rate_at(t)``. Each receiver acknowledges every ``heartbeat`` on its own clock (offset 1e6 s); ``jitter``
    delays when each receiver notices a message; ``ack_delay`` delays acknowledgements on the way back;
    ``states_queue``: the sender's own STATEs wait behind its data in the egress, so each round trip holds the
    egress's backlog of the moment; ``stamp_skew``: each receiver stamps data this much earlier than the STATEs
    whose round trips are measured. Returns the estimates after every acknowledgement."""
    rng = random.Random(seed)
    free_at, position = 0.0, 0
    drained: list[tuple[float, float]] = []  # (send time, when the egress is free after it)
    delivered: dict[str, list[tuple[float, int]]] = {k: [] for k in estimators}
    counts = dict.fromkeys(estimators, 0)
    events = []
    for t, n, link in sorted(sends):
        start = max(t, free_at)
        free_at = start + 8 * n / rate_at(start)
        drained.append((t, free_at))
        position += n
        counts[link] += n
        delivered[link].append((free_at + latency + rng.uniform(0, jitter) - stamp_skew, counts[link]))
        events.append((t, 0, "send", link, (n, position)))
    if acks:
        for link in estimators:
            arrivals = sorted(delivered[link])
            k, i, total, last = 1, 0, 0, None
            while k * heartbeat <= until:
                h = k * heartbeat + 0.001 * zlib.crc32(link.encode()) % 0.01  # each receiver's own phase
                while i < len(arrivals) and arrivals[i][0] <= h:
                    total, last = max(total, arrivals[i][1]), arrivals[i][0]
                    i += 1
                if last is not None:
                    events.append((h + latency + ack_delay, 1, "ack", link, (total, h - last, h + 1e6)))
                j = bisect.bisect_right(drained, (h, math.inf)) - 1
                waited = max(0.0, drained[j][1] - h) if states_queue and j >= 0 else 0.0
                events.append((h + latency, 2, "rtt", link, 2 * latency + waited + rng.uniform(0, jitter)))
                k += 1
    series = []
    for t, _, kind, link, data in sorted(events, key=lambda e: (e[0], e[1])):
        est = estimators[link]
        if kind == "send":
            est.on_send(data[0], data[1], t)
        elif kind == "ack":
            est.on_ack(*data, t)
            series.append((t, {k: e.bandwidth_bps(t) for k, e in estimators.items()}))
        else:
            est.on_rtt(data, t)
    return series


def steady(rate_at, until: float, load: float = 1.3, size: int = 16_000, link: str = "a"):
    """Messages of ``size`` bytes offered at ``load`` times the current rate: the link stays busy."""
    out, t = [], 0.0
    while t < until:
        out.append((t, size, link))
        t += 8 * size / (load * rate_at(t))
    return out


def at(series, t: float, link: str = "a") -> float | None:
    return [v for s, v in series if s <= t][-1][link]


def within(x: float | None, truth: float, tol: float) -> bool:
    return x is not None and abs(x - truth) <= tol * truth


def test_busy_link_converges_to_its_rate():
    est = LinkEstimator()
    series = simulate({"a": est}, steady(lambda t: 10 * MBIT, 5), 5)
    assert est.measured and est.samples >= 5
    assert within(at(series, 5), 10 * MBIT, 0.05)
    assert within(est.latency_s(), 0.005, 0.05)


def test_a_step_down_and_back_is_followed_within_two_seconds():
    def rate(t):
        return 2 * MBIT if 10 <= t < 20 else 20 * MBIT

    est = LinkEstimator(seed_bps=20 * MBIT)
    series = simulate({"a": est}, steady(rate, 30), 30, rate_at=rate)
    assert within(at(series, 9.9), 20 * MBIT, 0.1)
    assert within(at(series, 12), 2 * MBIT, 0.2)
    assert within(at(series, 19.9), 2 * MBIT, 0.1)
    assert within(at(series, 22), 20 * MBIT, 0.2)
    assert within(at(series, 30), 20 * MBIT, 0.1)


def test_noise_is_smoothed_and_a_lone_outlier_ignored():
    rng = random.Random(1)
    sends, t = [], 0.0
    while t < 20:
        n = rng.randint(1_000, 40_000)
        sends.append((t, n, "a"))
        t += 8 * n / (1.3 * 10 * MBIT) * rng.uniform(0.5, 1.5)
    est = LinkEstimator()
    series = simulate({"a": est}, sends, 20, jitter=0.01, seed=2)
    late = [v["a"] for s, v in series if s > 3]
    assert all(within(x, 10 * MBIT, 0.25) for x in late)
    # one wild sample (a receive thread that stalled) moves nothing; two in a row are believed
    before = est.bandwidth_bps(20)
    est._apply(100 * MBIT, 20.1)
    assert est.bandwidth_bps(20.1) == before
    est._apply(90 * MBIT, 20.2)
    assert est.bandwidth_bps(20.2) > 50 * MBIT


def test_a_confirmed_step_restarts_on_the_safe_side():
    # a recovery's first samples include a burst (the queue built at the old rate leaving at once): never above
    # the lower of the two that confirmed the step, whichever came first
    for first, second in ((50 * MBIT, 20 * MBIT), (20 * MBIT, 50 * MBIT)):
        est = LinkEstimator(seed_bps=2 * MBIT)
        est._apply(first, 1.0)
        est._apply(second, 1.1)
        assert est.bandwidth_bps(1.1) == 20 * MBIT
    # a drop's first sample spans the change: the estimate goes to the lower, newer rate at once
    est = LinkEstimator(seed_bps=20 * MBIT)
    est._apply(5 * MBIT, 1.0)
    est._apply(2 * MBIT, 1.1)
    assert est.bandwidth_bps(1.1) == 2 * MBIT


def test_an_idle_link_keeps_its_estimate():
    est = LinkEstimator()
    sends = steady(lambda t: 4 * MBIT, 3)  # busy for 3 s, then silent for 30 s, then one small message a second
    sends += [(40 + i, 200, "a") for i in range(20)]
    series = simulate({"a": est}, sends, 60, rate_at=lambda t: 4 * MBIT)
    measured = at(series, 5)  # the queue has drained
    assert within(measured, 4 * MBIT, 0.1)
    assert all(v["a"] >= 0.95 * measured for s, v in series if s > 5)  # never decays towards zero
    peak = max(v["a"] for s, v in series if s <= 5 and v["a"] is not None)
    assert all(v["a"] <= peak for s, v in series if s > 5)  # and never grows past what was seen


def test_an_avoided_link_is_probed_again_up_to_the_best_rate_seen():
    est = LinkEstimator(seed_bps=20 * MBIT, cfg=EstimatorConfig(probe_after_s=2.0, probe_gain_per_s=0.5))
    simulate({"a": est}, steady(lambda t: 1 * MBIT, 5, size=4000), 5, rate_at=lambda t: 1 * MBIT)
    low = est.bandwidth_bps(5)
    assert within(low, 1 * MBIT, 0.2)
    assert est.bandwidth_bps(6) == low  # no evidence for less than probe_after_s: unchanged
    assert est.bandwidth_bps(9) > 1.5 * low  # then it grows...
    assert est.bandwidth_bps(60) == pytest.approx(20 * MBIT)  # ...up to the best rate seen, not beyond


def test_a_link_that_got_faster_while_lightly_used_is_noticed():
    def rate(t):
        return 1 * MBIT if t < 5 else 20 * MBIT

    est = LinkEstimator()
    sends = steady(rate, 5)
    sends += [(5 + 0.1 * i, 32_000, "a") for i in range(30)]  # 2.6 Mbit/s offered: never busy at 20 Mbit/s
    series = simulate({"a": est}, sends, 8, rate_at=rate)
    assert within(at(series, 4.9), 1 * MBIT, 0.2)
    assert at(series, 8) > 8 * MBIT  # lower bounds from quick deliveries raised it


def test_small_messages_on_an_avoided_link_find_its_recovery_net_of_the_path_delay():
    def rate(t):
        return 1 * MBIT if t < 5 else 20 * MBIT

    est = LinkEstimator(seed_bps=20 * MBIT)
    sends = steady(rate, 5)  # busy at 1 Mbit/s: measured
    sends += [(5 + 0.05 * i, 2_352, "a") for i in range(60)]  # then only 2.3 KB learned codes, 0.4 Mbit/s offered
    series = simulate({"a": est}, sends, 8, rate_at=rate, latency=0.005)
    assert within(at(series, 4.9), 1 * MBIT, 0.2)
    # a 2.3 KB code takes 0.9 ms of wire at 20 Mbit/s beside 10 ms of delay both ways: only net of the round trip
    # does its delivery prove more than about 2 Mbit/s
    assert at(series, 6.5) > 10 * MBIT
    assert max(v["a"] for _, v in series) <= 20 * MBIT * 1.05  # and never more than the link can do


def test_a_backlogged_egress_does_not_inflate_the_estimate():
    # a kernel-shaped uplink: the sender's STATEs wait behind its data unseen, so once it is backlogged every recent
    # round trip holds the backlog, and a delivery bound net of such a round trip would prove far more than the link
    rate = 20 * MBIT
    sends = [(1 + t, n, link) for t, n, link in steady(lambda t: rate, 20, load=1.1, size=37_632)]  # idle first 1 s
    est = LinkEstimator(seed_bps=rate)
    series = simulate({"a": est}, sends, 21, rate_at=lambda t: rate, states_queue=True)
    assert max(v["a"] for _, v in series) <= 1.1 * rate
    assert within(at(series, 21), rate, 0.1)


def test_small_messages_stamped_a_little_early_do_not_lift_the_estimate():
    # results and learned codes (2-3 KB) on a fast, lightly used link: under a millisecond of wire each, so a
    # receiver whose data stamps run 0.3 ms ahead of its STATEs' would prove up to twice the link's rate
    rate = 20 * MBIT
    sends = [(0.02 * i, 2_400, "a") for i in range(1000)]
    est = LinkEstimator(seed_bps=rate)
    series = simulate({"a": est}, sends, 20, rate_at=lambda t: rate, jitter=0.0003, stamp_skew=0.0003)
    assert max(v["a"] for _, v in series) <= 1.1 * rate


def test_late_acknowledgements_do_not_fake_a_busy_link():
    # a lightly used, fast link whose receiver's STATEs wait half a second in its own congested uplink
    sends = [(0.05 * i, 200 if i % 4 else 3_000, "a") for i in range(400)]
    est = LinkEstimator()
    simulate({"a": est}, sends, 20, rate_at=lambda t: 10 * MBIT, ack_delay=0.5)
    assert not est.measured and est.bandwidth_bps(20) is None


def test_a_shared_uplink_is_measured_through_a_link_that_carries_little():
    rate = 5 * MBIT
    sends = steady(lambda t: rate, 10, link="bulk") + [(0.05 * i, 200, "light") for i in range(200)]
    ests = {"bulk": LinkEstimator(), "light": LinkEstimator()}
    series = simulate(ests, sends, 10, rate_at=lambda t: rate)
    assert within(at(series, 10, "bulk"), rate, 0.1)
    assert within(at(series, 10, "light"), rate, 0.15)


def test_a_link_that_never_acknowledges_keeps_its_seed_or_stays_unknown():
    seeded, unseeded = LinkEstimator(seed_bps=5 * MBIT, seed_latency_s=0.002), LinkEstimator()
    for est in (seeded, unseeded):
        simulate({"a": est}, steady(lambda t: 1 * MBIT, 60, size=2000), 60, rate_at=lambda t: 1 * MBIT, acks=False)
        assert len(est._unacked) <= est.cfg.max_unacked  # what awaits an ack is bounded
    assert seeded.bandwidth_bps(1e6) == 5 * MBIT and seeded.latency_s() == 0.002
    assert unseeded.bandwidth_bps(1e6) is None and unseeded.latency_s() is None


def test_latency_is_the_path_not_its_queue():
    est = LinkEstimator(seed_latency_s=0.05)
    rng = random.Random(0)
    for i in range(200):
        est.on_rtt(0.010 + rng.expovariate(1 / 0.02), i * 0.05)  # 5 ms each way, plus queueing
    assert est.latency_s() == pytest.approx(0.005, abs=0.001)
    for i in range(200, 260):  # the path got longer
        est.on_rtt(0.040 + rng.expovariate(1 / 0.02), i * 0.05)
    assert est.latency_s() == pytest.approx(0.020, abs=0.002)
    est.on_rtt(-1.0, 99)
    est.on_rtt(math.nan, 99)
    assert est.latency_s() == pytest.approx(0.020, abs=0.002)


def test_a_receiver_restart_is_survived():
    est = LinkEstimator()
    simulate({"a": est}, steady(lambda t: 8 * MBIT, 3), 3, rate_at=lambda t: 8 * MBIT)
    good = est.bandwidth_bps(3)
    est.on_ack(100, 0.01, 5.0, 3.1)  # its count restarted from zero
    est.on_ack(10**12, 0.01, 5.1, 3.2)  # and then something absurd
    assert est.bandwidth_bps(3.2) == good
    est.on_send(16_000, 10**9, 3.3)
    est.on_ack(10**12 + 16_000, 0.0, 5.3, 3.4)  # counting resumes from the new alignment
    assert est.bandwidth_bps(3.4) == good


def test_samples_shared_between_the_links_of_one_egress():
    a, b = LinkEstimator(seed_bps=20 * MBIT), LinkEstimator(seed_bps=20 * MBIT)
    for bps, lower in [(1 * MBIT, False), (1.1 * MBIT, False)]:  # found through a's acknowledgements
        a._apply(bps, 1.0)
        b.on_sample(bps, 1.0, lower)
    assert within(b.bandwidth_bps(1.0), 1 * MBIT, 0.1) and b.measured
    b.on_sample(0.5 * MBIT, 1.1, lower_bound=True)  # a lower bound below the estimate says nothing
    assert within(b.bandwidth_bps(1.1), 1 * MBIT, 0.1)
    b.on_sample(math.nan, 1.2)
    assert within(b.bandwidth_bps(1.2), 1 * MBIT, 0.1)
