import math

import pytest

from mdiexit.emulation.link import LinkPacer, TokenBucket


def test_one_megabyte_at_8_mbit_takes_one_second():
    b = TokenBucket(8e6, burst_bytes=0)
    assert b.reserve(1_000_000, now=10.0) == pytest.approx(11.0)


def test_burst_goes_immediately_then_paces():
    b = TokenBucket(8e6, burst_bytes=10_000)
    assert b.reserve(10_000, now=0.0) == 0.0  # within the burst
    assert b.reserve(1_000, now=0.0) == pytest.approx(0.001)  # 1000 B at 1 MB/s
    assert b.reserve(1_000, now=0.0) == pytest.approx(0.002)  # queues behind the first


def test_tokens_refill_while_idle_up_to_burst():
    b = TokenBucket(8e6, burst_bytes=5_000)
    b.reserve(5_000, now=0.0)
    assert b.reserve(5_000, now=1.0) == 1.0  # refilled (capped at the burst)
    assert b.reserve(2_000, now=1.0) == pytest.approx(1.002)


def test_unlimited_rate_never_paces():
    for rate in (None, math.inf):
        b = TokenBucket(rate)
        assert b.reserve(10**12, now=3.0) == 3.0
        assert b.backlog_bytes(3.0) == 0.0


def test_invalid_rate_rejected():
    with pytest.raises(ValueError):
        TokenBucket(0.0)
    with pytest.raises(ValueError):
        TokenBucket(1e6).reserve(-1, 0.0)


def test_link_queued_bytes_drain():
    link = LinkPacer(8e6, latency_s=0.003, burst_bytes=0)
    t = link.departure(500_000, now=0.0)
    assert t == pytest.approx(0.5)
    assert link.queued_bytes(0.0) == 500_000
    assert link.queued_bytes(0.25) == pytest.approx(250_000, abs=1)
    assert link.queued_bytes(0.5) == 0
    assert link.queued_bytes(2.0) == 0
    assert link.arrival(1_000_000, now=1.0) == pytest.approx(2.0 + 0.003)
    assert link.latency_s == 0.003 and link.bytes_sent == 1_500_000


def test_back_to_back_sends_queue_on_the_link():
    link = LinkPacer(8e6, burst_bytes=0)
    times = [link.departure(100_000, now=0.0) for _ in range(3)]
    assert times == pytest.approx([0.1, 0.2, 0.3])
    assert link.queued_bytes(0.05) == pytest.approx(250_000, abs=1)


def test_a_schedule_changes_the_rate_at_its_times_from_the_origin():
    p = LinkPacer(8e6, burst_bytes=0, schedule=((0.0, 8e6), (10.0, 0.8e6), (20.0, None)))
    assert p.departure(1_000_000, now=0.0) == pytest.approx(1.0)  # not started: the configured rate
    p.start_schedule(100.0)
    assert p.rate_bps(105.0) == 8e6
    assert p.departure(1_000_000, now=109.5) == pytest.approx(110.5)  # queued before the change...
    assert p.rate_bps(110.0) == 0.8e6
    assert p.queued_bytes(110.0) == 500_000  # ...drains at the old rate until it
    assert p.wait_s(110.0) == pytest.approx(5.0)  # and the rest at the new one
    assert p.departure(100_000, now=110.0) == pytest.approx(116.0)
    assert p.rate_bps(120.0) is None and p.departure(10**9, now=120.0) == 120.0 and p.wait_s(120.0) == 0.0


def test_set_rate_between_limited_and_unlimited():
    b = TokenBucket(None, burst_bytes=0)
    b.reserve(10**9, 0.0)
    b.set_rate(8e6, 1.0)
    assert b.reserve(1_000_000, 1.0) == pytest.approx(2.0)  # nothing was queued while unlimited
    with pytest.raises(ValueError, match="rate_bps"):
        b.set_rate(0.0, 2.0)
    with pytest.raises(ValueError, match="times must increase"):
        LinkPacer(1e6, schedule=((5.0, 1e6), (5.0, 2e6)))


def test_what_is_queued_leaves_at_the_rates_in_force():
    p = LinkPacer(8e6, burst_bytes=0, schedule=((10.0, 80e6),))
    p.start_schedule(0.0)
    assert p.departure(8_000_000, now=0.0) == pytest.approx(8.0)  # first said: 8 s at 8 Mbit/s
    assert p.departure(2_000_000, now=0.0) == pytest.approx(10.0)
    assert p.departure_of(8_000_000, 0.0, now=1.0) == pytest.approx(8.0)
    assert p.departure_of(10_000_000, 0.0, now=5.0) == pytest.approx(10.0)
    p2 = LinkPacer(8e6, burst_bytes=0, schedule=((4.0, 80e6),))
    p2.start_schedule(0.0)
    p2.departure(8_000_000, now=0.0)
    assert p2.departure_of(8_000_000, 0.0, now=4.0) == pytest.approx(4.4)  # 4 MB left at 8x the rate: 0.4 s
    assert p2.departure_of(4_000_000, 0.0, now=4.0) == pytest.approx(4.0)  # already gone
    assert LinkPacer(None).departure_of(10**9, 3.0, now=7.0) == 3.0
