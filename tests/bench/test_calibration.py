"""bench calibration: each way of calibrating, run as `mdiexit run` commands in turn, compared across runs."""

from __future__ import annotations

import json

import pytest

from mdiexit.bench.calibration import bench_calibration
from tests.runtime.conftest import write_cluster

pytestmark = pytest.mark.cluster


def host_times(run: dict, slowdowns: dict[str, float]) -> list[dict]:
    return [{(t, b): ms / slowdowns[node] for t, batches in tasks.items() for b, ms in batches.items()}
            for node, tasks in run.items() if tasks]


def test_both_ways_are_run_and_only_the_host_profile_gives_every_node_the_same_times(tmp_path, tiny_package):
    cluster = write_cluster(tmp_path / "c.yaml", tiny_package, [30, 10, 20])
    out = tmp_path / "calibration.json"
    report = bench_calibration(cluster, 2, out)
    assert json.loads(out.read_text()) == report and set(report["ways"]) == {"host", "self"}
    for way in report["ways"].values():
        assert len(way["ideal_per_s"]) == 2 and way["all"] and all(r["max_ms"] >= r["min_ms"] > 0 for r in way["all"])


def test_a_self_profiling_node_measures_its_own_times(tmp_path, tiny_package):
    from mdiexit.bench.calibration import WAYS, one_run

    cluster = write_cluster(tmp_path / "c.yaml", tiny_package, [30, 10, 20])
    slowdowns = {"source": 30, "w1": 10, "w2": 20}
    for way, extra in WAYS.items():
        s = one_run(cluster, extra, tmp_path / way)
        per_node = host_times({n: v["task_ms"] for n, v in s["per_node"].items()}, slowdowns)
        same = all(abs(p[k] - per_node[0][k]) < 1e-9 for p in per_node[1:] for k in p.keys() & per_node[0].keys())
        assert same == (way == "host"), way
