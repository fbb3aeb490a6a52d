"""A roll-out in virtual time (sim.rollout): the archive crosses the links at the bulk share, relayed where that is
sooner; a broken version is rolled back on its shadow agreement and a re-released one completes, every item on
one version, answered by that version's own logits."""

from __future__ import annotations

from collections import Counter

import pytest

from mdiexit.bench.variants import broken_package, renamed_package
from mdiexit.config import write_cluster
from mdiexit.package import package_archive
from mdiexit.runtime.bulk import BULK_SHARE
from mdiexit.runtime.options import RunOptions
from mdiexit.sim.rollout import RolloutRequest
from mdiexit.sim.run import simulate
from tests.sim.test_sim import ITEMS, PACKAGE, nodes

pytestmark = pytest.mark.slow  # two 20-second simulations, and each new version's logits
STEP_S = 3.0


def play(tmp_path, package, duration_s: float):
    cluster = write_cluster(tmp_path / "c.yaml", package=PACKAGE, mode="mdi-exit", nodes=nodes())
    opts = RunOptions(rate=60, duration_s=duration_s, warmup_s=0.5, live=False, limit_items=ITEMS)
    rollout = RolloutRequest(package, at_s=2.0, steps=(0.2, 1.0), step_s=STEP_S, shadow=0.25)
    return simulate(cluster, opts, seed=1, times="macs", rollout=rollout)


def test_a_simulated_rollout_ships_over_the_links_and_judges_as_the_runtime_does(tmp_path):
    bad = play(tmp_path, broken_package(PACKAGE, tmp_path / "bad"), duration_s=20)
    s = bad.summary
    record = s["rollouts"][0]
    assert record["outcome"] == "rolled_back" and "agreement" in record["reason"] and s["lost"] == 0
    on = Counter(r.package for r in bad.ledger.records.values())
    assert 0 < on[record["version"]] < 0.05 * s["admitted"]
    wrong = [r for r in bad.ledger.records.values() if r.package == record["version"]]
    assert sum(r.label == r.truth for r in wrong) < 0.3 * len(wrong)  # its own (rotated) logits answered them

    good = play(tmp_path, renamed_package(PACKAGE, tmp_path / "good"), duration_s=24)
    g = good.summary["rollouts"][0]
    assert g["outcome"] == "completed" and g["agreement"] == 1.0 and good.summary["lost"] == 0
    # shipping: the source's 20 Mbit/s uplink once, to w1 (50 Mbit/s), which relays to w2; each at the bulk share
    archive_mb = len(package_archive(PACKAGE)[0]) * 8 / 1e6
    shipped_s = archive_mb / (20 * BULK_SHARE) + archive_mb / (50 * BULK_SHARE) + 2 * 1.0  # and two loads
    first_step_s = g["started_at_s"] + shipped_s  # (it started once the source had loaded it)
    assert first_step_s + 2 * STEP_S - 0.1 <= g["ended_at_s"] <= first_step_s + 2 * STEP_S + 2.0  # + reports' delays
    late = [r for r in good.ledger.records.values() if r.admitted_at - good.ledger.records[0].admitted_at >
            g["ended_at_s"] + 0.5]
    assert late and {r.package for r in late} == {g["version"]}
