"""When a heartbeat sends a STATE, and to whom: pure, time passed in."""

from __future__ import annotations

import pytest

from mdiexit.runtime.reporting import Reporting, due_after, heartbeat_after

QUIET_S = 0.1


def test_a_state_moves_by_more_than_the_hysteresis_only():
    """A peer moves work only for differences above the hysteresis: smaller wobbles wait for the quiet period."""
    r = Reporting(hysteresis_s=0.002)
    est = {1: 0.01, 2: 0.02}
    assert r.due(0.0, QUIET_S, 0.0, 0, est)  # the first heartbeat reports
    assert not r.due(0.05, QUIET_S, 0.0015, 0, est)  # 1.5 ms of backlog: within the hysteresis
    assert r.due(0.06, QUIET_S, 0.0025, 0, est)  # 2.5 ms: more than it
    assert not r.due(0.07, QUIET_S, 0.0025, 0, {1: 0.0115, 2: 0.02})  # an estimate wobbled by less than 2 ms
    assert r.due(0.08, QUIET_S, 0.0025, 0, {1: 0.5, 2: 0.02})  # one moved
    assert not r.due(0.09, QUIET_S, 0.0025, 0, {1: 0.5, 2: 0.02})
    assert r.due(0.095, QUIET_S, 0.0025, 1, {1: 0.5, 2: 0.02})  # an item was parked
    assert r.due(0.10, QUIET_S, 0.0025, 1, {1: 0.5, 2: 0.02, 3: 0.1})  # a first estimate of a task
    assert not r.due(0.15, QUIET_S, 0.0025, 1, {1: 0.5, 2: 0.02, 3: 0.1})
    assert r.due(0.20, QUIET_S, 0.0025, 1, {1: 0.5, 2: 0.02, 3: 0.1})  # unmoved, but a quiet period since the last


def test_without_a_hysteresis_a_tenth_of_a_millisecond_still_is_no_move():
    r = Reporting(hysteresis_s=0.0)
    assert r.due(0.0, QUIET_S, 0.0, 0, {})
    assert not r.due(0.01, QUIET_S, 0.00005, 0, {})
    assert r.due(0.02, QUIET_S, 0.0002, 0, {})


def test_a_heartbeat_skips_the_peers_told_since_the_last_one_within_the_quiet_period():
    r = Reporting(hysteresis_s=0.0)

    def beat(t: float, backlog_s: float, several_sources: bool = False) -> frozenset[str] | None:
        return r.on_heartbeat(t, QUIET_S, backlog_s, 0, {}, several_sources)

    assert beat(0.0, 0.0) == frozenset()  # the first STATE goes to every peer
    r.told("m", 0.02)
    r.told("w", 0.03)
    assert beat(0.05, 0.01) == {"m", "w"}
    assert beat(0.06, 0.01) is None  # nothing moved: no STATE
    r.told("m", 0.07)
    assert beat(0.08, 0.02) == {"m"}  # w was told nothing since the last heartbeat
    r.told("m", 0.12)
    assert beat(0.15, 0.03) == frozenset()  # m's last STATE (at 0) was a quiet period ago
    r.told("m", 0.16)
    assert beat(0.17, 0.04, several_sources=True) == frozenset()  # each source's backlog travels only by STATE


def test_heartbeats_are_timed_so_that_every_peers_state_reaches_a_node_together():
    period = 0.05
    latency = {"a": 0.002, "b": 0.005, "c": 0.0}
    beats = {n: heartbeat_after(1234.567 + i * 0.013, period, lat) for i, (n, lat) in enumerate(latency.items())}
    for sender, at in beats.items():
        # its STATE reaches a node r at at + latency[sender] + r's latency: a point of the grid plus r's, for all
        grid = (at + latency[sender]) / period
        assert grid == pytest.approx(round(grid), abs=1e-6)
    at = beats["a"]
    for fired in (at - 0.0004, at, at + 0.004):  # a timer a little early or late keeps the grid, one period on
        assert heartbeat_after(fired, period, 0.002) == pytest.approx(at + period)


def test_a_periodic_thing_is_due_at_the_heartbeat_nearest_its_period():
    due = due_after(1.0, 0.05)
    assert 0.9996 >= due  # a heartbeat 0.4 ms early is the one nearest the second
    assert not 0.9496 >= due  # the one before it is not
