"""NodeCore in-process: no threads, no sockets, time passed in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mdiexit.config import NodeConfig
from mdiexit.package import load_package
from mdiexit.policies.modes import rules_for
from mdiexit.policies.offload import NeighbourView, OffloadConfig, ServiceEstimator
from mdiexit.runtime.core import NodeCore, codes_pay, held_tasks, neighbour_view
from mdiexit.runtime.events import Arrived, Computed, Leave, Report, Route, Send, Tick, WorkItem

PACKAGE = Path(__file__).resolve().parents[2] / "models" / "mobilenetv2-fmnist"


@pytest.fixture(scope="module")
def pkg():
    return load_package(PACKAGE)


def make_core(pkg, held=(1, 2, 3, 4), neighbours=None, mode="mdi-exit", is_source=False, compress_on=None,
              max_batch=1):
    est = ServiceEstimator.from_package(pkg, 1e9)
    for k in range(1, pkg.num_tasks + 1):
        est.seed(k, 0.01)
    views = {name: NeighbourView(name, frozenset(tasks), latency_s=0.001)
             for name, tasks in (neighbours or {}).items()}
    return NodeCore("n", pkg, frozenset(held), rules_for(mode), OffloadConfig(), est, views, is_source, compress_on,
                    max_batch=max_batch)


def item(i: int, task: int = 1, deadline: float | None = None) -> WorkItem:
    return WorkItem(i, task, None, 0.0, (0.9, 0.9, 0.9, 0.0), deadline=deadline)


def test_take_batch_never_waits_and_batches_one_task_looking_past_others(pkg):
    core = make_core(pkg)
    assert core.take_batch(8, 0.0) == []
    for i, task in enumerate([2, 2, 2, 3, 2]):
        core.accept(item(i, task))
    batch = core.take_batch(2, 0.0)
    assert [it.item_id for it in batch] == [0, 1]
    assert core.busy_until == pytest.approx(0.02)  # two items at 10 ms each
    core.accept(item(5, 3))
    # the head's task, looking past the item of another task, which keeps its place
    assert [it.item_id for it in core.take_batch(8, 0.0)] == [2, 4]
    assert core.backlog_s(0.0) == pytest.approx(0.02 + 2 * 0.01)  # the running batch, plus two items queued
    assert [it.item_id for it in core.take_batch(8, 0.0)] == [3, 5]


def test_expired_items_are_dropped_unrun(pkg):
    core = make_core(pkg)
    core.accept(item(0, deadline=1.0))
    core.accept(item(1, deadline=5.0))
    assert [it.item_id for it in core.take_batch(8, 2.0)] == [1]
    assert [it.item_id for it in core.take_expired()] == [0]
    assert core.take_expired() == []


def test_on_data_queues_held_tasks_and_forwards_the_rest(pkg):
    core = make_core(pkg, held=(1,), neighbours={"m": (2, 3, 4)})
    assert core.on_data(item(0, 1), 0.0, 0) is None and len(core.queue) == 1
    core.neighbours["m"].on_report(0.0, 0.0, {2: 0.01})
    s = core.on_data(item(1, 2), 0.1, 0)
    assert isinstance(s, Send) and s.target == "m"
    assert core.neighbours["m"].sent_since_report_s == pytest.approx(0.01)  # the work it sent is counted


def test_parked_items_are_retried_then_given_up(pkg):
    core = make_core(pkg, held=(1,), neighbours={"m": (2,)})
    assert core.on_data(item(0, 2), 0.0, 0) is None  # m never reported: nobody fresh holds task 2
    assert core.on_data(item(1, 2), 5.0, 0) is None
    assert len(core.parked) == 2
    sends, dropped = core.retry_parked(10.0, 6.0, 0)  # item 0 waited 10 s > 6 s: given up
    assert sends == [] and [it.item_id for it in dropped] == [0] and core.dropped_parked == 1
    core.neighbours["m"].on_report(0.0, 10.5, {2: 0.01})
    sends, dropped = core.retry_parked(10.6, 6.0, 0)
    assert [s.item.item_id for s in sends] == [1] and dropped == [] and core.parked == []


def test_busy_node_offloads_to_an_idle_neighbour(pkg):
    core = make_core(pkg, neighbours={"m": (1, 2, 3, 4)}, is_source=True)
    core.neighbours["m"].on_report(0.0, 0.0, {1: 0.01})
    for i in range(20):
        core.accept(item(i, 1))  # 200 ms of work queued here
    s = core.route(item(99, 1), 0.0, 0)
    assert isinstance(s, Send) and s.target == "m"
    mdi = make_core(pkg, neighbours={"m": (1, 2, 3, 4)}, mode="mdi", is_source=True)
    mdi.neighbours["m"].on_report(0.0, 0.0, {1: 0.01})
    for i in range(20):
        mdi.accept(item(i, 1))
    assert mdi.route(item(99, 1), 0.0, 0) is None  # classic MDI: the source runs task 1 itself


def test_payload_bytes_per_link(pkg):
    boundary = pkg.compression[0].after_task if pkg.compression else None
    if boundary is None:
        pytest.skip("the package has no learned codes")
    core = make_core(pkg, neighbours={"a": (boundary + 1,), "b": (boundary + 1,)},
                     compress_on={"a": {boundary}, "b": set()})
    nbytes = core.payload_bytes(item(0, boundary + 1))
    assert nbytes == {"a": pkg.compression[0].code_bytes, "b": pkg.task(boundary).feature_bytes}
    coded = item(1, boundary + 1)
    coded.code = {"code": np.zeros(1)}  # arrived as a code: goes on as it came, on every link
    assert set(core.payload_bytes(coded).values()) == {pkg.compression[0].code_bytes}
    assert core.payload_bytes(item(2, 1)) == dict.fromkeys("ab", int(np.prod(pkg.input_shape)))


def test_finish_batch_applies_the_exit_rule(pkg):
    core = make_core(pkg)
    batch = [item(0, 1), item(1, 1)]
    logits = np.zeros((2, len(pkg.classes)), np.float32)
    logits[0, 3] = 50.0  # certain: exits at task 1
    finished, onward = core.finish_batch(batch, None, logits, 0.02, 0.0)
    assert [(f.item.item_id, f.label, f.exit) for f in finished] == [(0, 3, 1)]
    assert [(it.item_id, it.task, it.x) for it in onward] == [(1, 2, None)]
    assert core.tasks_run == {1: 2}


def test_mode_rules_shape_what_nodes_hold_and_see(pkg):
    src = NodeConfig("s", 1, role="source", bandwidth_mbps=8, latency_ms=1)
    w = NodeConfig("w", 2, tasks=(3, 4), latency_ms=2)
    assert held_tasks(src, rules_for("ddi"), 4) == frozenset()
    view = neighbour_view(src, w, rules_for("mdi-exit"), 4)
    assert view.holds_tasks == {3, 4} and view.bandwidth_bps == 8e6 and view.latency_s == pytest.approx(0.003)
    assert neighbour_view(w, src, rules_for("ddi-exit"), 4).holds_tasks == frozenset()  # DDI workers never pass on


def test_codes_pay_only_where_the_link_is_the_cost():
    assert codes_pay(100_000, 10_000, 1e6, 0.001, 0.001)  # 0.8 s of floats against 0.08 s + 2 ms
    assert not codes_pay(100_000, 10_000, 1e9, 0.001, 0.001)  # a fast link: coding costs more than it saves
    assert not codes_pay(100_000, 10_000, None, 0.0, 0.0)  # unlimited


def test_a_still_node_reports_every_quiet_period_and_a_moving_one_at_every_heartbeat(pkg):
    core = make_core(pkg)

    def reports(t: float) -> bool:
        return any(isinstance(a, Report) for a in core.step(Tick(0.1, 6.0, 0), t))

    assert reports(0.0)  # the first heartbeat reports
    assert not reports(0.05)  # nothing moved: the next one stays quiet
    assert reports(0.1)  # but a still node still reports every quiet period
    core.computing = True  # the device holds a batch: what arrives waits in the queue
    core.accept(item(1))  # work arrived: its queue and backlog moved
    assert reports(0.15)
    assert not reports(0.2)
    core.estimator.update(1, 0.5)  # a service estimate moved
    assert reports(0.25)


def test_a_heartbeat_skips_the_peers_a_data_told_but_each_still_gets_a_state_every_quiet_period(pkg):
    """DESIGN §3.2: every message carries the backlog, and every peer gets a STATE at least every quiet period."""
    core = make_core(pkg, held=(2, 3, 4), neighbours={"m": (1, 2, 3, 4), "w": (2, 3, 4)})
    core.neighbours["m"].on_report(0.0, 0.0, {1: 0.01})

    def tick(t: float) -> frozenset[str] | None:
        core.estimator.update(2, 0.01 + t)  # its state moves between heartbeats
        reports = [a for a in core.step(Tick(0.1, 6.0, 0), t) if isinstance(a, Report)]
        return reports[0].skip if reports else None

    def data_to_m(i: int, t: float) -> None:
        core.neighbours["m"].on_report(0.0, t, {1: 0.01})
        assert [a.target for a in core.step(Arrived(item(i, 1), 0), t) if isinstance(a, Send)] == ["m"]

    assert tick(0.0) == frozenset()  # the first STATE goes to every peer
    data_to_m(1, 0.02)
    assert tick(0.05) == {"m"}  # m heard the backlog from the DATA; w did not
    assert tick(0.10) == frozenset()  # nothing sent since the last heartbeat
    data_to_m(2, 0.12)
    assert tick(0.15) == {"m"}
    data_to_m(3, 0.17)
    assert tick(0.20) == frozenset()  # m's last STATE was a quiet period ago: it gets one, DATA or not


def test_the_quiet_period_keeps_within_the_design_and_the_peers_staleness():
    from mdiexit.config import cluster_from_dict

    def quiet(**fields) -> float:
        return cluster_from_dict({"package": "p", "nodes": [{"name": "s", "role": "source", "port": 1}],
                                  **fields}).quiet_report_s

    assert quiet() == pytest.approx(0.1)  # heartbeat 50 ms: a still node reports every 100 ms (DESIGN §3.2)
    assert quiet(heartbeat_ms=20) == pytest.approx(0.04)
    assert quiet(heartbeat_ms=50, stale_after_ms=120) == pytest.approx(0.06)  # half the staleness
    assert quiet(heartbeat_ms=50, dead_after_ms=200) == pytest.approx(0.05)


# ---------------------------------------------------------------- step(event, now) -> actions, as both shells see it
def kinds(actions) -> list[str]:
    return [type(a).__name__ for a in actions]


def logits_exiting(pkg, exits: list[bool]) -> np.ndarray:
    """Logits for a batch: certain (label 3) where the item exits, flat where it goes on."""
    logits = np.zeros((len(exits), len(pkg.classes)), np.float32)
    for i, e in enumerate(exits):
        if e:
            logits[i, 3] = 50.0
    return logits


def test_an_idle_device_gets_the_first_arrival_and_the_rest_wait_for_the_next_batch(pkg):
    core = make_core(pkg, held=(1,), max_batch=4)
    first = core.step(Arrived(item(0), 0), 0.0)
    assert kinds(first) == ["Compute"] and [it.item_id for it in first[0].batch] == [0]
    assert not first[0].continued  # the device was idle: this call starts now, not where a last one ended
    for i in (1, 2, 3):
        assert core.step(Arrived(item(i), 0), 0.001) == []  # the device is busy: queued
    assert len(core.queue) == 3


def test_a_computed_batch_hands_the_device_its_next_batch_before_its_own_results_and_routes(pkg):
    core = make_core(pkg, held=(1,), neighbours={"m": (2, 3, 4)}, max_batch=2)
    core.neighbours["m"].on_report(0.0, 0.0, {2: 0.01})
    [compute] = core.step(Arrived(item(0), 0), 0.0)
    for i in (1, 2):
        core.step(Arrived(item(i), 0), 0.0)
    actions = core.step(Computed(compute.batch, None, logits_exiting(pkg, [False]), 0.01, 0), 0.01)
    assert kinds(actions) == ["Compute", "Send"]
    assert actions[0].continued and [it.item_id for it in actions[0].batch] == [1, 2]
    assert actions[1].target == "m" and actions[1].item.task == 2
    actions = core.step(Computed(actions[0].batch, None, logits_exiting(pkg, [True, False]), 0.02, 0), 0.03)
    assert kinds(actions) == ["Deliver", "Send"]  # nothing queued: no Compute; item 1 exits, item 2 goes on
    assert actions[0].finished.item.item_id == 1 and actions[0].finished.exit == 1
    assert not core.computing


def test_items_past_their_deadline_expire_instead_of_being_computed(pkg):
    core = make_core(pkg, held=(1,), max_batch=4)
    [compute] = core.step(Arrived(item(0), 0), 0.0)
    core.step(Arrived(item(1, deadline=0.005), 0), 0.0)
    core.step(Arrived(item(2, deadline=5.0), 0), 0.0)
    actions = core.step(Computed(compute.batch, None, logits_exiting(pkg, [True]), 0.01, 0), 0.01)
    assert kinds(actions) == ["Expire", "Compute", "Deliver"]
    assert actions[0].item.item_id == 1 and [it.item_id for it in actions[1].batch] == [2]


def test_a_tick_reports_when_due_and_gives_up_parked_items(pkg):
    core = make_core(pkg, held=(1,), neighbours={"m": (2,)})
    assert kinds(core.step(Route(item(0, 2), 0), 0.0)) == []  # nobody fresh holds task 2: parked
    assert kinds(core.step(Tick(0.1, 6.0, 0), 0.05)) == ["Report"]  # it moved since the last report
    assert kinds(core.step(Tick(0.1, 6.0, 0), 0.1)) == []  # still, and within the quiet period
    actions = core.step(Tick(0.1, 6.0, 0), 7.0)
    assert kinds(actions) == ["Report", "GiveUp"] and actions[1].item.item_id == 0


def test_a_still_nodes_state_goes_at_the_heartbeat_nearest_its_quiet_period(pkg):
    """Heartbeats on the grid fire a little early or late: a still node still reports every two of them, not three."""
    core = make_core(pkg)
    assert kinds(core.step(Tick(0.1, 6.0, 0, 0.05), 0.0)) == ["Report"]
    assert kinds(core.step(Tick(0.1, 6.0, 0, 0.05), 0.0496)) == []
    assert kinds(core.step(Tick(0.1, 6.0, 0, 0.05), 0.0996)) == ["Report"]  # 0.4 ms early: still this one
    assert kinds(core.step(Tick(0.1, 6.0, 0, 0.05), 0.1503)) == []


def test_a_leaving_node_computes_nothing_more_and_hands_back_all_it_holds_and_whatever_arrives(pkg):
    core = make_core(pkg, held=(1, 2), max_batch=1)
    [compute] = core.step(Arrived(item(0), 0), 0.0)
    core.step(Arrived(item(1), 0), 0.0)
    left = core.step(Leave(), 0.001)
    assert kinds(left) == ["HandBack"] and left[0].item.item_id == 1
    assert kinds(core.step(Arrived(item(2), 0), 0.002)) == ["HandBack"]
    actions = core.step(Computed(compute.batch, None, logits_exiting(pkg, [False]), 0.01, 0), 0.01)
    assert kinds(actions) == ["HandBack"] and actions[0].item.task == 2  # the running batch's item goes back
    assert kinds(core.step(Tick(0.1, 6.0, 0), 0.05)) == ["Report"]  # a leaving node reports at every tick
    assert kinds(core.step(Tick(0.1, 6.0, 0), 0.06)) == ["Report"]


def test_sources_share_a_node_by_weight_and_see_their_own_backlog(pkg):
    est = ServiceEstimator.from_package(pkg, 1e9)
    for k in range(1, pkg.num_tasks + 1):
        est.seed(k, 0.01)
    core = NodeCore("n", pkg, frozenset({1, 2, 3, 4}), rules_for("mdi-exit"), OffloadConfig(), est, {},
                    weights={"cam1": 1.0, "cam2": 3.0})
    for i in range(40):
        for src in ("cam1", "cam2"):
            core.accept(WorkItem(i, 2, None, 0.0, (0.9, 0.9, 0.9, 0.0), source=src))
    backlogs = core.source_backlogs_s(0.0)
    # cam2 is served three times as fast: its 40 items wait behind a third as many of cam1's
    assert backlogs["cam2"] == pytest.approx(0.4 + 0.4 / 3)
    assert backlogs["cam1"] == pytest.approx(0.4 + 0.4)
    assert core.backlog_of("cam2", 0.0) == backlogs["cam2"] and core.backlog_s(0.0) == pytest.approx(0.8)
    taken = [core.take_batch(1, 0.0)[0].source for _ in range(40)]
    assert taken.count("cam2") == 30 and taken.count("cam1") == 10
    assert make_core(pkg).source_backlogs_s(0.0) is None  # one source: its backlog is the node's
