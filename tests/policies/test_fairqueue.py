"""Weighted fair queueing of several sources' items (policies.fairqueue)."""

from __future__ import annotations

from collections import Counter

import pytest

from mdiexit.policies.fairqueue import FairQueue, fair_wait_s


def serve(q: FairQueue, n: int, cost_s: float = 0.01) -> Counter:
    """Serve ``n`` items one at a time, each ``cost_s``; count them by flow."""
    served: Counter = Counter()
    for _ in range(n):
        flow = q.next_flow()
        q.flows[flow].popleft()
        q.charge(flow, cost_s)
        served[flow] += 1
    return served


def test_one_flow_is_a_fifo_queue():
    q: FairQueue[int] = FairQueue({"a": 1.0})
    for i in range(5):
        q.append("a", i)
    assert list(q) == [0, 1, 2, 3, 4] and len(q) == 5
    assert q.next_flow() == "a" and q.flows["a"][0] == 0


def test_backlogged_flows_share_by_weight():
    q: FairQueue[int] = FairQueue({"a": 1.0, "b": 1.0, "c": 2.0})
    for i in range(400):
        for flow in "abc":
            q.append(flow, i)
    served = serve(q, 400)
    assert served["a"] == pytest.approx(100, abs=2) and served["b"] == pytest.approx(100, abs=2)
    assert served["c"] == pytest.approx(200, abs=2)


def test_it_is_work_conserving_and_an_idle_flow_banks_no_credit():
    q: FairQueue[int] = FairQueue({"a": 1.0, "b": 1.0})
    for i in range(300):
        q.append("a", i)
    assert serve(q, 100) == Counter(a=100)  # alone: the whole device
    for i in range(200):
        q.append("b", i)
    # b comes back level with a, not 100 items ahead: the two alternate from here on
    assert serve(q, 100) == Counter(a=50, b=50)


def test_costs_count_not_items():
    q: FairQueue[int] = FairQueue({"a": 1.0, "b": 1.0})
    for i in range(100):
        q.append("a", i)
        q.append("b", i)
    served: Counter = Counter()
    for _ in range(60):
        flow = q.next_flow()
        q.flows[flow].popleft()
        q.charge(flow, 0.03 if flow == "a" else 0.01)  # a's items cost three times b's
        served[flow] += 1
    assert served["b"] == pytest.approx(3 * served["a"], abs=3)


def test_fair_wait_counts_the_others_only_as_far_as_they_are_served_beside():
    weights = {"a": 1.0, "b": 1.0, "c": 2.0}
    queued = {"a": 0.1, "b": 1.0, "c": 0.0}
    assert fair_wait_s(queued, weights, "a") == pytest.approx(0.1 + 0.1 + 0.0)
    assert fair_wait_s(queued, weights, "b") == pytest.approx(1.0 + 0.1 + 0.0)
    assert fair_wait_s(queued, weights, "c") == 0.0  # an empty flow's share is free
    assert fair_wait_s({"a": 0.5}, {"a": 1.0}, "a") == 0.5  # one flow: its queue
