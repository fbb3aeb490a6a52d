"""How long a request waited unread, from the client's clock alone: whatever the clocks' offset, the excess of its
one-way delay over the least seen from that client."""

import pytest

from mdiexit.runtime.service import UnreadWait


def test_the_wait_is_the_delay_beyond_the_least_seen_whatever_the_clock_offset():
    for offset in (-3600.0, 0.0, 0.4, 7200.0):  # the client's clock behind or ahead of the service's
        w = UnreadWait()
        sent = [0.0, 0.01, 0.02, 0.03]
        transit = [0.002, 0.003, 0.002, 0.502]  # the last one sat half a second in a buffer
        waited = [w.waited_s(b"c", s + offset, s + d) for s, d in zip(sent, transit, strict=True)]
        assert waited == pytest.approx([0.0, 0.001, 0.0, 0.5], abs=1e-3)  # within the floor's drift allowance


def test_clients_are_told_apart_and_requests_without_a_send_time_never_wait():
    w = UnreadWait()
    assert w.waited_s(b"a", 10.0, 10.001) == 0.0
    assert w.waited_s(b"b", 50.0, 10.2) == 0.0  # another client, another clock
    assert w.waited_s(b"a", 10.1, 10.301) == pytest.approx(0.2, abs=1e-3)
    assert w.waited_s(b"a", None, 99.0) == 0.0


def test_the_floor_rises_slowly_so_that_drift_never_accumulates():
    w = UnreadWait()
    w.waited_s(b"c", 0.0, 0.001)
    # an hour later the client's clock has drifted 0.5 s behind: the floor has risen by up to 3.6 s, so the drift
    # reads as no wait at all, and the floor is the drifted delay from then on
    assert w.waited_s(b"c", 3600.0, 3600.501) == 0.0
    assert abs(w.waited_s(b"c", 3600.1, 3600.601) - 0.0) < 1e-3
