"""Time dilation: the cluster and the run k times slower, the results read back in the cluster's own time."""

from __future__ import annotations

import json

import pytest

from mdiexit.config import ConfigError, load_cluster
from mdiexit.runtime.dilation import dilate_cluster, dilate_options, dilated_run, undilate_summary
from mdiexit.runtime.options import RunOptions
from tests.runtime.conftest import write_cluster


def test_a_dilated_cluster_is_k_times_slower_everywhere(tmp_path, tiny_package):
    path = write_cluster(tmp_path / "c.yaml", tiny_package, [30, 10, 20], heartbeat_ms=40)
    nodes = load_cluster(path).nodes
    d = load_cluster(dilate_cluster(path, 2.5, tmp_path / "d.yaml"))
    assert d.heartbeat_ms == 100 and d.dead_after_ms == 2500
    for a, b in zip(nodes, d.nodes, strict=True):
        assert (b.slowdown, b.latency_ms, b.bandwidth_mbps) == (a.slowdown * 2.5, a.latency_ms * 2.5,
                                                                 a.bandwidth_mbps / 2.5)
        assert (b.name, b.port, b.tasks) == (a.name, a.port, a.tasks)


def test_a_bandwidth_schedule_is_dilated_in_time_and_rate(tmp_path, tiny_package):
    path = write_cluster(tmp_path / "c.yaml", tiny_package, [30, 10])
    c = load_cluster(path)
    from mdiexit.config import write_cluster as write_file

    path = write_file(tmp_path / "s.yaml", c, every_node={"bandwidth_schedule": [[0, 20], [10, 2]]})
    d = load_cluster(dilate_cluster(path, 2, tmp_path / "d.yaml"))
    assert all(n.bandwidth_schedule == ((0, 10), (20, 1)) for n in d.nodes)


def test_dilation_refuses_what_it_cannot_do(tmp_path, tiny_package):
    path = write_cluster(tmp_path / "c.yaml", tiny_package, [30, 10], heartbeat_ms=50)
    with pytest.raises(ConfigError, match="heartbeat_ms 50 x 3 .* use a dilation <= 2"):
        dilate_cluster(path, 3, tmp_path / "d.yaml")
    with pytest.raises(ConfigError, match=">= 1"):
        dilate_options(RunOptions(), 0.5)


def test_options_and_summary_round_trip():
    o = dilate_options(RunOptions(rate=300, duration_s=12, warmup_s=4, deadline_ms=500), 2)
    assert (o.rate, o.duration_s, o.warmup_s, o.deadline_ms, o.max_wait_ms) == (150, 24, 8, 1000, 500)
    s = undilate_summary({"throughput_per_s": 149.0, "rate": 150.0, "duration_s": 24.0, "admitted": 3600,
                          "latency_ms": {"p50": 40.0, "p95": 90.0}, "per_node": {"w1": {"backlog_s_mean": 0.2}},
                          "links": {"w1": {"source": {"estimated_mbps": 10.0, "latency_ms": 8.0}}}}, 2)
    assert (s["throughput_per_s"], s["rate"], s["duration_s"], s["admitted"]) == (298, 300, 12, 3600)
    assert s["latency_ms"] == {"p50": 20, "p95": 45} and s["per_node"]["w1"]["backlog_s_mean"] == 0.1
    assert s["links"]["w1"]["source"] == {"estimated_mbps": 20, "latency_ms": 4} and s["dilation"] == 2


@pytest.mark.cluster
def test_a_dilated_run_serves_the_same_items_the_same_way(tmp_path, cluster_file):
    opts = RunOptions(mode="mdi-exit", rate=100, duration_s=1.5, warmup_s=0.5, live=False, limit_items=200,
                      drain_timeout_s=30)
    plain, dilated = (dilated_run(k, tmp_path)(cluster_file, opts) for k in (1.0, 2.0))
    s = dilated.summary
    assert s["dilation"] == 2 and s["rate"] == 100 and s["duration_s"] == pytest.approx(1.5)
    assert s["completed"] == s["admitted"] and s["lost"] == 0 and not s["crashed"]
    # the same stream (the same rate over the same emulated time): the same items, each with the same answer
    assert abs(s["admitted"] - plain.summary["admitted"]) <= 2
    answers = {r.key: (r.label, r.exit) for r in plain.ledger.records.values()}
    same = [answers[r.key] == (r.label, r.exit) for r in dilated.ledger.records.values() if r.key in answers]
    assert len(same) >= 100 and all(same)
    assert {row["rate"] for row in dilated.timeline} == {100}  # read back: the rate the cluster was offered


@pytest.mark.cluster
def test_run_dilation_writes_results_in_the_clusters_own_time(tmp_path, cluster_file):
    from mdiexit.cli import main

    out = tmp_path / "out"
    rc = main(["run", "--cluster", str(cluster_file), "--dilation", "2", "--rate", "80", "--duration", "1",
               "--warmup", "0.3", "--quiet", "--out", str(out)])
    s = json.loads((out / "summary.json").read_text())
    assert rc == 0 and s["dilation"] == 2 and s["rate"] == 80 and s["lost"] == 0
    assert (out / "cluster-dilated-2.yaml").exists() and (out / "items.csv").exists()
    assert main(["run", "--cluster", str(cluster_file), "--dilation", "0.5", "--out", str(out)]) == 2
