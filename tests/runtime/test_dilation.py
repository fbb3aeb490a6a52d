"""Time dilation: every node's clock runs k times slower (mdiexit.clock), so the run takes k times the host's time
and everything it reports is already in the cluster's own time."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from mdiexit.clock import WallClock
from mdiexit.config import ConfigError, load_cluster
from mdiexit.emulation.device import DeviceModel
from mdiexit.emulation.netns import NamespaceNetwork, tbf_args
from mdiexit.runtime.launch import run_cluster
from mdiexit.runtime.options import RunOptions


def test_a_dilated_device_takes_k_times_its_budget_of_host_time_and_reports_the_budget():
    device = DeviceModel(slowdown=3.0, emulation="measured", clock=WallClock(2.0))
    t0 = time.perf_counter()
    _, seconds, ended = device.run_from(("task", 1), 1, lambda: time.sleep(0.01), None)
    wall_s = time.perf_counter() - t0
    assert seconds == pytest.approx(3 * 0.01, rel=0.5) and seconds >= 0.03  # slowdown x what the host took
    assert wall_s >= 2 * seconds * 0.999  # ... in twice the host's time
    assert ended == pytest.approx(t0 + 2 * seconds, abs=0.005)


def test_namespaces_shape_a_dilated_link_k_times_slower(tiny_package, tmp_path):
    from tests.runtime.conftest import write_cluster

    cluster = load_cluster(write_cluster(tmp_path / "c.yaml", tiny_package, [30, 10]))
    assert NamespaceNetwork(cluster, clock=WallClock(4.0))._tbf(20.0) == tbf_args(5.0)


def test_a_clock_refuses_a_factor_below_one_and_so_do_the_options():
    with pytest.raises(ValueError, match=">= 1"):
        WallClock(0.5)
    with pytest.raises(ConfigError, match="--dilation: expected a factor >= 1"):
        RunOptions(dilation=0.5)


@pytest.mark.cluster
def test_a_dilated_run_serves_the_same_items_the_same_way(tmp_path, cluster_file):
    opts = RunOptions(mode="mdi-exit", rate=100, duration_s=1.5, warmup_s=0.5, live=False, limit_items=200,
                      drain_timeout_s=30)
    plain = run_cluster(cluster_file, opts)
    wall0 = time.monotonic()
    dilated = run_cluster(cluster_file, dataclasses.replace(opts, dilation=2.0))
    wall_s = time.monotonic() - wall0
    s = dilated.summary
    assert s["dilation"] == 2 and s["rate"] == 100 and s["duration_s"] == pytest.approx(1.5)
    assert s["completed"] == s["admitted"] and s["lost"] == 0 and not s["crashed"]
    assert wall_s >= 2 * 1.5  # admission alone lasted 1.5 s of the cluster's time: 3 s of the host's
    # the same stream (the same rate over the same emulated time): the same items, each with the same answer
    assert abs(s["admitted"] - plain.summary["admitted"]) <= 3
    answers = {r.key: (r.label, r.exit) for r in plain.ledger.records.values()}
    same = [answers[r.key] == (r.label, r.exit) for r in dilated.ledger.records.values() if r.key in answers]
    assert len(same) >= 100 and all(same)
    assert {row["rate"] for row in dilated.timeline} == {100}  # the rate the cluster was offered, in its time
    assert max(row["t_s"] for row in dilated.timeline) < 1.5 + 0.5  # the timeline, in the cluster's time


@pytest.mark.cluster
def test_run_dilation_writes_results_in_the_clusters_own_time(tmp_path, cluster_file):
    from mdiexit.cli import main

    out = tmp_path / "out"
    rc = main(["run", "--cluster", str(cluster_file), "--dilation", "2", "--rate", "80", "--duration", "1",
               "--warmup", "0.3", "--quiet", "--out", str(out)])
    s = json.loads((out / "summary.json").read_text())
    assert rc == 0 and s["dilation"] == 2 and s["rate"] == 80 and s["lost"] == 0
    assert s["config"]["dilation"] == 2 and (out / "items.csv").exists()
    assert main(["run", "--cluster", str(cluster_file), "--dilation", "0.5", "--out", str(out)]) == 2
