"""A roll-out on a running cluster of real processes (`mdiexit rollout`, runtime.deploy): a stranger's key is
refused, a broken version is rolled back on its shadow agreement, a good one completes; a worker restarted after it
and a device joining after it both end up holding the new version alone; every item has one outcome throughout,
and each ran on the version its record names."""

from __future__ import annotations

import csv
import io
import signal
import time

import pytest

from mdiexit.bench.variants import broken_package, renamed_package
from mdiexit.config import load_cluster
from mdiexit.ops.rollout import RolloutError, find_keys, rollout
from mdiexit.runtime.launch import LiveRun, RunOptions, run_cluster
from mdiexit.runtime.ports import free_ports
from mdiexit.runtime.report import write_results
from mdiexit.security import create_keys
from tests.runtime.conftest import write_cluster

pytestmark = pytest.mark.cluster


def test_a_broken_version_is_rolled_back_and_a_good_one_completes(tmp_path, tiny_package):
    bad = broken_package(tiny_package, tmp_path / "bad")
    good = renamed_package(tiny_package, tmp_path / "good")
    create_keys(["stranger"], tmp_path / "strangers")
    cluster_file = write_cluster(tmp_path / "c.yaml", tiny_package, [30, 10, 20])  # no keys: ephemeral ones
    cluster = load_cluster(cluster_file)
    gates = {"step_s": 2.0, "shadow": 0.25, "min_agreement": 0.9, "max_exit_shift": 0.3, "max_p95_ms": None}
    seen: dict = {}

    def operator(live: LiveRun) -> None:
        try:
            time.sleep(0.5)
            stranger = find_keys(cluster, cluster.source, tmp_path / "strangers" / "stranger.key_secret", None, False)
            with pytest.raises(RolloutError, match="refused this key"):
                rollout(cluster.source, good, {"steps": [1.0], **gates}, stranger, out=io.StringIO())
            keys = find_keys(cluster, cluster.source, None, None, False)  # the run's own, in the runtime folder
            seen["bad"] = rollout(cluster.source, bad, {"steps": [0.2, 1.0], **gates}, keys, out=io.StringIO())
            seen["good"] = rollout(cluster.source, good, {"steps": [0.3, 1.0], **gates}, keys, out=io.StringIO())
            seen["good_done_at"] = live.source.clock.now()
            # after it: a worker restarts with the cluster file's (retired) version, and a new device joins
            live.signal("w2", signal.SIGKILL)
            live.procs["w2"].wait(timeout=10)
            live.restart("w2")
            live.join("w3", free_ports(1)[0], slowdown=10)
            new = seen["good"][1].package
            deadline = time.monotonic() + 25
            while time.monotonic() < deadline and any(
                    live.source.packages_of.get(n) != (new,) for n in ("w2", "w3")):
                time.sleep(0.2)
            seen["held_after"] = {n: live.source.packages_of.get(n) for n in ("w2", "w3")}
        except Exception as e:  # noqa: BLE001 - the test asserts on it below
            seen["error"] = e

    result = run_cluster(cluster_file, RunOptions(rate=60, duration_s=20, live=False), on_ready=operator)
    assert "error" not in seen, seen.get("error")
    # the restarted worker was shipped the new version and unloaded the old; the joiner was welcomed with it
    assert seen["held_after"] == {"w2": (seen["good"][1].package,), "w3": (seen["good"][1].package,)}
    s = result.summary
    assert s["lost"] == 0 and s["duplicates"] == 0 and s["failed"] == 0 and s["completed"] == s["admitted"]
    assert seen["bad"][0] == "rolled_back" and seen["good"][0] == "completed"
    first, second = s["rollouts"]
    assert first["outcome"] == "rolled_back" and "agreement" in first["reason"] and first["agreement"] < 0.5
    assert second["outcome"] == "completed" and second["agreement"] == 1.0 and second["reason"] == ""

    write_results(result, tmp_path / "out")
    rows = list(csv.DictReader((tmp_path / "out" / "items.csv").open()))
    by_version: dict[str, list[dict]] = {}
    for row in rows:
        by_version.setdefault(row["version"], []).append(row)
    assert set(by_version) == {first["from_version"], first["version"], second["version"]}
    on_bad = by_version[first["version"]]
    assert 0 < len(on_bad) <= 0.05 * len(rows)  # rolled back within its first step
    # the broken version's exits answer the class after their own: its items are nearly all wrong, the others not
    accuracy = {v: sum(r["label"] == r["truth"] for r in rs) / len(rs) for v, rs in by_version.items()}
    assert accuracy[first["version"]] < 0.35 < accuracy[first["from_version"]]
    # once the good version completed, every item admitted runs on it
    after = [r for r in result.ledger.records.values() if r.admitted_at > seen["good_done_at"]]
    assert after and {r.package for r in after} == {second["version"]}
