"""SourceCore in-process: the gate, the admission step, the window and supervision, time passed in."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import pytest

from mdiexit.policies.gate import AdmissionGate
from mdiexit.policies.modes import rules_for
from mdiexit.runtime import events
from mdiexit.runtime.arrivals import Offer
from mdiexit.runtime.sourcecore import CONTROL_PERIOD_S, WINDOW_MEMORY_S, FixedAdmission, SourceCore

THRESHOLDS = (0.9, 0.8, 0.7, 0.0)


@dataclass
class Recording(FixedAdmission):
    steps: list[tuple[float, float]] = field(default_factory=list)

    def step(self, max_backlog_s: float, t: float) -> None:
        self.steps.append((max_backlog_s, t))


def make(rate: float = 100.0, mode: str = "mdi-exit", **gate) -> SourceCore:
    return SourceCore("source", rules_for(mode), 4, Recording(rate, THRESHOLDS), AdmissionGate(**gate), 8, 1.0)


def offer(sc: SourceCore, k: int, t: float, deadline_s: float | None = None) -> str | None:
    return sc.offer(Offer(None, k % 10, k, deadline_s), t)


def test_release_admits_at_the_rate_with_ids_in_order():
    sc = make(rate=100.0)
    for k in range(5):
        assert offer(sc, k, 0.0) is None
    items, expired = sc.release(0.0, 0.0)
    assert [it.item_id for it in items] == [0] and expired == []  # one token banked at the start
    items, _ = sc.release(0.02, 0.0)  # 20 ms at 100/s: two more tokens
    assert [it.item_id for it in items] == [1, 2]
    assert items[0].thresholds == THRESHOLDS and items[0].task == 1
    assert sc.ledger.admitted == 3 and sc.ledger.records[2].key == 2


def test_modes_without_exits_admit_at_no_exit_thresholds():
    sc = make(mode="mdi")
    offer(sc, 0, 0.0)
    items, _ = sc.release(0.0, 0.0)
    assert items[0].thresholds == (1.0, 1.0, 1.0, 0.0)


def test_a_large_backlog_holds_admission_until_it_drains():
    sc = make(max_backlog_s=0.5)
    sc.on_state("w1", 0.9, False, 0.0)
    offer(sc, 0, 0.0)
    assert sc.release(0.01, 0.0)[0] == []
    assert sc.release(0.02, 0.7)[0] == []  # its own backlog counts too
    sc.on_state("w1", 0.1, False, 0.05)
    assert [it.item_id for it in sc.release(0.06, 0.0)[0]] == [0]


def test_a_results_backlog_stands_in_for_a_state():
    """A RESULT carries its node's backlog (DESIGN §3.2): the admission sees it as it would a STATE's."""
    sc = make(max_backlog_s=0.5)
    sc.on_state("w1", 0.9, False, 0.0)
    offer(sc, 0, 0.0)
    assert sc.release(0.01, 0.0)[0] == []
    sc.step(events.ResultIn(7, 1, 2, 0.9, "w1", backlog_s=0.1), 0.2)  # a RESULT for an item it does not know
    assert [it.item_id for it in sc.release(0.3, 0.0)[0]] == [0]
    sc.on_state("w1", 0.0, True, 0.4)  # leaving: a late RESULT's backlog does not bring it back into the count
    sc.step(events.ResultIn(8, 1, 2, 0.9, "w1", backlog_s=2.0), 0.5)
    assert sc.reports["w1"].leaving and sc.reports["w1"].backlog_s == 0.0


def test_down_nodes_do_not_count_in_the_largest_backlog():
    sc = make()
    sc.on_state("w1", 2.0, False, 0.0)
    sc.on_state("w2", 0.3, False, 0.0)
    assert sc.max_backlog_s(0.1, 1.0) == 2.0
    assert sc.node_down("w1", "crashed", 1.0) == []
    assert sc.max_backlog_s(0.1, 1.1) == 0.3


def test_a_silent_node_goes_down_its_items_are_dispatched_again_and_it_comes_back():
    sc = make()
    sc.heard("w1", 0.0)
    sc.on_state("w1", 0.0, False, 0.0)
    for k in range(3):
        offer(sc, k, 0.0)
    sc.release(0.0, 0.0)
    sc.release(0.02, 0.0)
    assert sc.supervise(0.5, 0.0).down == []
    sup = sc.supervise(1.5, 0.0)  # silent for more than dead_after_s (1 s)
    assert sup.down == [("w1", 3)]
    assert sorted(w.item_id for w in sup.retries) == [0, 1, 2] and {w.attempt for w in sup.retries} == {1}
    assert sc.supervise(1.6, 0.0).down == []  # down once
    sc.heard("w1", 2.0)
    sc.on_state("w1", 0.0, False, 2.0)
    assert sc.supervise(2.1, 0.0).back == ["w1"] and "w1" not in sc.down
    for i in range(3):
        sc.on_result(i, 0, 4, 0.9, "w2", 2.2, attempt=1)
    sc.supervise(2.3, 0.0)
    down = next(e for e in sc.failure_summary() if e["kind"] == "silent")
    assert down["recovery_s"] == pytest.approx(2.3 - 1.5)


def test_overdue_items_are_retried_and_late_ones_expire():
    sc = make()
    offer(sc, 0, 0.0)
    offer(sc, 1, 0.0, deadline_s=0.5)
    sc.release(0.0, 0.0)
    sc.release(0.01, 0.0)
    sup = sc.supervise(1.0, 0.0)
    assert sup.retries == [] and sc.ledger.expired == 1  # item 1 passed its deadline
    sup = sc.supervise(3.5, 0.0)  # no result after 3 x dead_after_s
    assert [w.item_id for w in sup.retries] == [0]


def test_control_step_feeds_the_policy_and_logs_a_row():
    sc = make()
    sc.on_state("w1", 0.25, False, 0.0)
    t = 0.0
    for step in range(15):
        t = step * CONTROL_PERIOD_S
        offer(sc, step, t)
        for it in sc.release(t, 0.0)[0]:
            sc.on_result(it.item_id, 0, 4, 0.9, "w1", t + 0.01)
        sc.control_step(t, 0.0, 0.05)
    assert sc.admission.steps[-1] == (0.25, t)
    row = sc.timeline[-1]
    assert row["t_s"] == pytest.approx(t) and row["max_backlog_s"] == 0.25 and row["rate"] == 100.0
    assert row["thresholds"] == "0.9 0.8 0.7 0"
    assert sc.window >= sc.min_window and sc.unloaded_s == pytest.approx(0.01)


def test_the_window_remembers_the_recent_peak_so_a_stall_does_not_shrink_it_for_good():
    sc = make(rate=1000.0)
    assert sc.recent_peak(100.0, 1.0) == 100.0
    stalled = sc.recent_peak(0.0, 2.0)  # a link dropped: nothing completed for a while
    assert stalled == pytest.approx(100.0 * math.exp(-1.0 / WINDOW_MEMORY_S))
    assert sc.recent_peak(0.0, 1.0 + 3 * WINDOW_MEMORY_S) < 100.0 * math.exp(-2.9)  # forgotten in time
    assert sc.recent_peak(50.0, 40.0) == 50.0  # a new measurement above the decayed peak replaces it


# ---------------------------------------------------------------- step(event, now) -> actions, as the shells see it
def test_an_offer_is_queued_or_refused_and_a_release_dispatches_in_admission_order():
    sc = make(rate=100.0, max_wait_s=0.05)
    assert sc.step(events.Offered(Offer(None, 1, 0, None)), 0.0) == []  # queued at the gate
    assert sc.step(events.Offered(Offer(None, 2, 1, 0.5)), 0.0) == []  # with a deadline of 0.5 s
    actions = sc.step(events.Release(0.0), 0.0)
    assert [type(a) for a in actions] == [events.Dispatch] and actions[0].item.item_id == 0
    actions = sc.step(events.Release(10.0), 0.6)  # a backlog held item 1 past its deadline: answered, never dispatched
    assert actions == [events.Answer(1, "expired", "its deadline passed while it waited for admission")]
    for k in range(2, 40):  # far more than the gate may hold at 100/s: refused with a reason
        actions = sc.step(events.Offered(Offer(None, 0, k, None)), 0.6)
    assert [(a.key, a.outcome) for a in actions] == [(39, "rejected")] and actions[0].reason.startswith("overloaded")


def test_a_leaving_node_is_taken_out_and_its_items_dispatched_again():
    sc = make(rate=1000.0)
    for k in range(3):
        sc.step(events.Offered(Offer(None, k, k, None)), 0.0)
    sent = [a.item.item_id for t in (0.0, 0.01) for a in sc.step(events.Release(0.0), t)]
    assert sent == [0, 1, 2]
    assert sc.step(events.StateIn("w1", 0.2), 0.02) == []
    actions = sc.step(events.StateIn("w1", 0.0, leaving=True), 0.03)
    assert actions[0] == events.TakeOut("w1", "left", 3)
    assert [(a.item.item_id, a.item.attempt) for a in actions[1:]] == [(0, 1), (1, 1), (2, 1)]
    assert sc.step(events.PeerDown("w1", "crashed"), 0.04) == []  # down once


def test_a_control_step_hands_back_what_supervision_decided():
    sc = make(rate=1000.0)
    sc.step(events.StateIn("w1", 0.0), 0.0)
    sc.step(events.Offered(Offer(None, 0, 0, None)), 0.0)
    (dispatched,) = sc.step(events.Release(0.0), 0.0)
    actions = sc.step(events.ControlStep(0.0, 0.0), 1.5)  # w1 silent for longer than dead_after_s
    retry = dataclasses.replace(dispatched.item, attempt=1)
    assert actions == [events.TakeOut("w1", "silent", 1), events.Dispatch(retry)]
    assert sc.timeline[-1]["t_s"] == 1.5
    sc.step(events.StateIn("w1", 0.0), 2.0)
    assert sc.step(events.Supervise(0.0), 2.1) == [events.Back("w1")]
    assert sc.step(events.ResultIn(0, 3, 4, 0.9, "w1", attempt=1), 2.2) == [] and sc.ledger.completed == 1
