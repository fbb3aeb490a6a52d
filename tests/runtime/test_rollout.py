"""A roll-out's decisions, time passed in (runtime.rollout, its part of SourceCore and NodeCore): the share of
items on the new version, the shadow comparisons, the gates, the rollback, the retired version; and the nodes
keeping each item on its one version."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest

from mdiexit.package import load_package
from mdiexit.policies.gate import AdmissionGate
from mdiexit.policies.modes import rules_for
from mdiexit.policies.offload import NeighbourView, OffloadConfig, ServiceEstimator
from mdiexit.runtime import events
from mdiexit.runtime.arrivals import Offer
from mdiexit.runtime.core import NodeCore
from mdiexit.runtime.events import Send, WorkItem
from mdiexit.runtime.rollout import MIN_COMPARED, SHADOW_BASE, RolloutCore, RolloutPlan, exit_shift
from mdiexit.runtime.sourcecore import FixedAdmission, SourceCore

PACKAGE = Path(__file__).resolve().parents[2] / "models" / "mobilenetv2-fmnist"
OLD, NEW = "model@old", "model@new"


def plan(**kw) -> RolloutPlan:
    return RolloutPlan(new=NEW, old=OLD, **{"steps": (0.1, 1.0), "step_s": 5.0, "shadow": 0.2, **kw})


def stepping(ro: RolloutCore, now: float = 1.0) -> RolloutCore:
    ro.on_packages("w1", [OLD, NEW], None, now)
    ro.tick(now, ["w1"])
    assert ro.phase == "step"
    return ro


def test_shipping_waits_for_every_live_node_then_the_first_step_runs_its_exact_share():
    ro = RolloutCore(plan(), "new", 0.0)
    ro.on_packages("w1", [OLD, NEW], None, 0.5)
    ro.tick(0.5, ["source", "w1", "w2"])
    assert ro.phase == "shipping" and ro.version_for() == (OLD, None)  # nobody runs it before all hold it
    ro.on_packages("source", [OLD, NEW], None, 0.6)
    ro.on_packages("w2", [OLD, NEW], None, 0.6)
    ro.tick(0.7, ["source", "w1", "w2"])
    assert ro.phase == "step" and ro.fraction == 0.1
    chosen = [ro.version_for() for _ in range(100)]
    assert Counter(v for v, _ in chosen) == {OLD: 90, NEW: 10}  # exactly the share, no randomness
    twins = [(v, twin) for v, twin in chosen if twin is not None]
    assert len(twins) == 20 and all(twin != v for v, twin in twins)  # each copy runs on the other version
    ro.on_packages("w2", [OLD], None, 0.8)  # it restarted with its cluster file's version: to be shipped again
    assert ro.relapsed == {"w2"} and not ro.holders["w2"]


def test_a_node_that_cannot_load_the_version_rolls_it_back_with_its_reason():
    ro = RolloutCore(plan(), "new", 0.0)
    ro.on_packages("w1", [OLD], "model@new: PackageError: task2.onnx is not an ONNX model", 2.0)
    assert ro.phase == "rolled_back" and "w1" in ro.reason and "task2.onnx" in ro.reason
    assert ro.retired == NEW and ro.current == OLD and ro.version_for() == (OLD, None)


def compare(ro: RolloutCore, n: int, agree: int, exits: tuple[int, int] = (4, 4)) -> None:
    """``n`` items on the old version with their shadow copies on the new, of which ``agree`` answer alike, at
    ``exits`` (old, new); results in either order."""
    for k in range(n):
        tid = ro.twin_id(k, NEW)
        label = 3
        copy = (label if k < agree else label + 1, exits[1])
        if k % 2:
            ro.on_twin(tid, *copy)
            ro.on_result(k, OLD, exits[0], 0.1, label)
        else:
            ro.on_result(k, OLD, exits[0], 0.1, label)
            ro.on_twin(tid, *copy)


def test_disagreeing_labels_roll_back_once_enough_are_compared():
    ro = stepping(RolloutCore(plan(min_agreement=0.95), "new", 0.0))
    compare(ro, MIN_COMPARED - 1, agree=0)
    ro.tick(2.0, ["w1"])
    assert ro.phase == "step"  # too few to judge yet
    compare(ro, 1, agree=0)
    ro.tick(2.1, ["w1"])
    assert ro.phase == "rolled_back" and "agreement 0.000" in ro.reason and ro.ended_at == 2.1


def test_an_expired_shadow_copy_is_not_compared():
    ro = stepping(RolloutCore(plan(), "new", 0.0))
    tid = ro.twin_id(7, NEW)
    ro.on_twin(tid, None)
    ro.on_result(7, OLD, 4, 0.1, 2)
    assert ro.compared == 0 and not ro.pairs and not ro.expects(tid)


def test_agreeing_steps_complete_after_each_holds_its_time():
    ro = stepping(RolloutCore(plan(), "new", 0.0), now=1.0)
    compare(ro, MIN_COMPARED, agree=MIN_COMPARED)
    ro.tick(5.9, ["w1"])
    assert ro.step == 0  # 4.9 s of its 5
    ro.tick(6.0, ["w1"])
    assert ro.step == 1 and ro.fraction == 1.0
    ro.tick(11.0, ["w1"])
    assert ro.phase == "completed" and ro.current == NEW and ro.retired == OLD and ro.agreement == 1.0
    assert ro.version_for() == (NEW, None)
    assert ro.line() == f"{NEW} (completed; items on it: 1, agreement 1.000 over {MIN_COMPARED})"


def test_the_exit_mix_is_compared_on_the_same_items_and_p95_on_the_new_versions():
    same = stepping(RolloutCore(plan(max_exit_shift=0.2), "new", 0.0))
    compare(same, 2 * MIN_COMPARED, agree=2 * MIN_COMPARED, exits=(2, 2))
    same.tick(2.0, ["w1"])
    assert same.phase == "step" and exit_shift(same.figures.exits_new, same.figures.exits_old) == 0.0
    ro = stepping(RolloutCore(plan(max_exit_shift=0.2), "new", 0.0))
    compare(ro, MIN_COMPARED, agree=MIN_COMPARED, exits=(1, 4))  # the same labels, every item exiting later
    assert exit_shift(ro.figures.exits_new, ro.figures.exits_old) == 1.0
    ro.tick(2.0, ["w1"])
    assert ro.phase == "rolled_back" and "exit mix" in ro.reason
    slow = stepping(RolloutCore(plan(shadow=0.0, max_p95_s=0.05), "new", 0.0))
    for k in range(MIN_COMPARED):
        slow.on_result(k, NEW, 4, 0.2, 0)
    slow.tick(2.0, ["w1"])
    assert slow.phase == "rolled_back" and "p95 latency 200 ms" in slow.reason


def test_a_failed_item_on_the_new_version_rolls_back():
    ro = stepping(RolloutCore(plan(), "new", 0.0))
    ro.on_failed(OLD, "no result after 4 attempts", 2.0)
    assert ro.phase == "step"
    ro.on_failed(NEW, "no result after 4 attempts", 2.0)
    assert ro.phase == "rolled_back" and "failed" in ro.reason


# ---------------------------------------------------------------- the source core's part
def source_core() -> SourceCore:
    return SourceCore("source", rules_for("mdi-exit"), 4, FixedAdmission(1000.0, (0.9, 0.8, 0.7, 0.0)),
                      AdmissionGate(), 64, 1.0, OLD)


def admit(sc: SourceCore, n: int, t: float) -> list[WorkItem]:
    for k in range(n):
        sc.offer(Offer(None, k % 10, k), t)
    released = []
    for dt in (0.5, 1.0):  # the gate's tokens accrue from its last release
        released += [a.item for a in sc.step(events.Release(0.0), t + dt) if isinstance(a, events.Dispatch)]
    assert not sc.gate.queue
    return released


def test_the_source_tags_items_runs_shadow_copies_apart_and_retires_the_old_version_when_its_items_are_done():
    sc = source_core()
    before = admit(sc, 5, 0.0)
    assert {it.package for it in before} == {""} and {r.package for r in sc.ledger.records.values()} == {OLD}
    assert sc.start_rollout(plan(steps=(0.5, 1.0), shadow=0.5), "new", 1.0) is None
    assert sc.start_rollout(plan(), "again", 1.0) is not None  # one at a time
    sc.step(events.StateIn("w1", 0.0, packages=(OLD, NEW)), 1.5)
    sc.step(events.StateIn("source", 0.0, packages=(OLD, NEW)), 1.5)
    sc.step(events.ControlStep(0.0, 0.0), 2.0)
    assert sc.rollout.phase == "step"
    items = admit(sc, 10, 2.0)
    admitted = [it for it in items if it.item_id < SHADOW_BASE]
    copies = [it for it in items if it.item_id >= SHADOW_BASE]
    assert Counter(it.package for it in admitted) == {OLD: 5, NEW: 5} and len(copies) == 5
    assert all(sc.ledger.records[it.item_id].package == it.package for it in admitted)
    assert sc.ledger.admitted == 15  # a shadow copy is no admitted item
    for it in copies:  # their results touch no ledger; a stray id is not expected
        assert sc.expects(it.item_id)
        sc.step(events.ResultIn(it.item_id, 1, 4, 0.9, "w1"), 2.5)
    assert sc.ledger.completed == 0 and not sc.expects(SHADOW_BASE + 10_000)
    sc.rollout.rollback("an operator's test", 3.0)
    for it in before + admitted:
        if it.package != NEW:
            sc.step(events.ResultIn(it.item_id, 1, 4, 0.9, "w1"), 3.0)
    assert not any(isinstance(a, events.Retire) for a in sc.step(events.ControlStep(0.0, 0.0), 3.1))
    for it in admitted:  # the new version's last items in flight come back: only now is it retired
        if it.package == NEW:
            sc.step(events.ResultIn(it.item_id, 1, 4, 0.9, "w1"), 3.2)
    assert [a for a in sc.step(events.ControlStep(0.0, 0.0), 3.3) if isinstance(a, events.Retire)] == \
        [events.Retire(NEW)]
    assert sc.step(events.ControlStep(0.0, 0.0), 3.4) == [] and sc.package == OLD  # once
    assert {r.package for r in sc.ledger.records.values()} == {OLD, NEW}


# ---------------------------------------------------------------- the node core's part
@pytest.fixture(scope="module")
def pkgs():
    old = load_package(PACKAGE)
    return old, dataclasses.replace(old, name="renamed")  # another version name, the same files


def node(pkg, neighbours=("a", "b")) -> NodeCore:
    est = ServiceEstimator.from_package(pkg, 1e9)
    for k in range(1, pkg.num_tasks + 1):
        est.seed(k, 0.01)
    views = {n: NeighbourView(n, frozenset({1, 2, 3, 4}), latency_s=0.001) for n in neighbours}
    return NodeCore("n", pkg, frozenset({1}), rules_for("mdi-exit"), OffloadConfig(), est, views, True)


def test_items_go_only_to_neighbours_holding_their_version_and_batches_never_mix_versions(pkgs, monkeypatch):
    old, new = pkgs
    monkeypatch.setattr(type(new), "version", property(lambda p: f"{p.name}@x"))
    core = node(old)
    core.add_version(new)
    for peer in ("a", "b"):
        core.neighbours[peer].on_report(0.0, 0.0, {k: 0.01 for k in range(1, 5)})
    core.on_packages("a", [old.version])
    core.on_packages("b", [old.version, new.version])
    for i in range(30):
        s = core.route(WorkItem(i, 2, None, 0.0, (0.9,) * 4, package=new.version), 0.0, 0)
        assert isinstance(s, Send) and s.target == "b"  # a does not hold it: task 2 goes to b
    core.on_packages("b", [old.version])
    assert core.route(WorkItem(99, 2, None, 0.0, (0.9,) * 4, package=new.version), 0.0, 0) is None
    assert core.parked  # nobody holds it: parked until someone does (then given up to the source)
    mixed = node(old, neighbours=())
    mixed.add_version(new)
    for i in range(6):
        mixed.accept(WorkItem(i, 1, None, 0.0, (0.9,) * 4, package=new.version if i % 2 else ""))
    batches = [mixed.take_batch(8, 0.0) for _ in range(2)]
    assert [{it.package for it in b} for b in batches] == [{""}, {new.version}]
    mixed.remove_version(old.version)
    assert mixed.first == new.version and old.version not in mixed.pkgs
