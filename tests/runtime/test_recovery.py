"""Failures, leaves and returns in a running cluster (DESIGN §9): every admitted item ends with exactly one
result, whatever happens to the workers."""

from __future__ import annotations

import signal
import time

import pytest

from mdiexit.config import ConfigError
from mdiexit.runtime.launch import LiveRun, RunOptions, run_cluster
from tests.runtime.conftest import write_cluster

pytestmark = pytest.mark.cluster

SLOW = [2000, 4000, 4000]  # emulated devices slow enough that items queue on them (tens of items/s in all)


def wait_for(cond, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def run(cluster_file, action, duration=6.0, rate=40.0, **kw):
    opts = RunOptions(rate=rate, duration_s=duration, warmup_s=0.5, live=False, drain_timeout_s=60, **kw)
    return run_cluster(cluster_file, opts, on_ready=action).summary


def assert_nothing_lost(s):
    assert s["admitted"] > 0
    assert s["completed"] == s["admitted"], s
    assert s["lost"] == 0 and s["duplicates"] == 0 and s["failed"] == 0


def kill_when(phase: str, name: str = "w1", after_done: int = 0):
    def action(live: LiveRun):
        wait_for(lambda: live.source.phase == phase and live.source.ledger.completed >= after_done
                 and (phase != "draining" or len(live.source.ledger.in_flight) > 10), what=phase)
        live.signal(name, signal.SIGKILL)
    return action


@pytest.mark.parametrize("phase,after_done,rate,duration", [("admitting", 0, 2.0, 6.0), ("admitting", 60, 40.0, 6.0),
                                                            ("draining", 0, 300.0, 2.0)],
                         ids=["idle", "mid-stream", "drain"])
def test_kill_9_loses_nothing(tmp_path, tiny_package, phase, after_done, rate, duration):
    # slow workers so that items are in flight on w1 when it dies; in the drain case the cluster is overloaded
    cluster = write_cluster(tmp_path / "c.yaml", tiny_package, SLOW, dead_after_ms=400)
    s = run(cluster, kill_when(phase, after_done=after_done), rate=rate, duration=duration)
    assert_nothing_lost(s)
    assert [e["node"] for e in s["node_failures"] if e["kind"] == "crashed"] == ["w1"]
    assert s["crashed"] == ["w1"]


def test_hung_worker_is_declared_down(tmp_path, tiny_package):
    cluster = write_cluster(tmp_path / "c.yaml", tiny_package, SLOW, dead_after_ms=400)

    def action(live: LiveRun):
        wait_for(lambda: live.source.ledger.completed >= 40, what="40 results")
        live.signal("w1", signal.SIGSTOP)
        wait_for(lambda: live.source.phase == "done", timeout=120, what="the end of the run")
        live.signal("w1", signal.SIGCONT)

    s = run(cluster, action, rate=100.0)  # above capacity: w1 holds items when it hangs
    assert_nothing_lost(s)
    assert any(e["node"] == "w1" and e["kind"] == "silent" for e in s["node_failures"])
    assert s["redispatched"] > 0


def test_restarted_worker_is_used_again(tmp_path, tiny_package):
    cluster = write_cluster(tmp_path / "c.yaml", tiny_package, SLOW, dead_after_ms=400)
    killed_at = []

    def action(live: LiveRun):
        wait_for(lambda: live.source.ledger.completed >= 30, what="30 results")
        killed_at.append(time.monotonic() - live.source.run_start)  # the run's clock, as the summary's at_s
        live.signal("w1", signal.SIGKILL)
        wait_for(lambda: "w1" in live.source.down, what="w1 down")
        live.procs["w1"].wait(10)
        live.restart("w1")
        wait_for(lambda: "w1" not in live.source.down, what="w1 back")

    s = run(cluster, action, duration=10.0, rate=60.0)  # near capacity: every worker gets work
    assert_nothing_lost(s)
    kinds = [(e["node"], e["kind"]) for e in s["node_failures"]]
    assert ("w1", "crashed") in kinds and ("w1", "back") in kinds
    crashed_at = next(e["at_s"] for e in s["node_failures"] if e["kind"] == "crashed")
    assert killed_at[0] <= crashed_at < killed_at[0] + 1.0  # told when it happened, from the start of admission
    assert sum(s["per_node"]["w1"]["tasks_run"].values()) > 0  # the counters of the restarted process


def test_graceful_leave_hands_work_back(tmp_path, tiny_package):
    cluster = write_cluster(tmp_path / "c.yaml", tiny_package, [30, 60, 60])

    def action(live: LiveRun):
        wait_for(lambda: live.source.ledger.completed >= 40, what="40 results")
        live.signal("w2", signal.SIGTERM)

    s = run(cluster, action)
    assert_nothing_lost(s)
    assert any(e["node"] == "w2" and e["kind"] == "left" for e in s["node_failures"])
    assert "w2" not in s["crashed"]


def test_one_way_neighbour_graph_loses_nothing(tmp_path, tiny_package):
    # source -> w1 -> w2 only; w2 alone holds the last task, and never sends DATA to anyone
    from mdiexit.package import load_package

    last = load_package(tiny_package).num_tasks
    cluster = write_cluster(tmp_path / "c.yaml", tiny_package, [20, 20, 20], mode="mdi",
                            neighbours={"source": ["w1"], "w1": ["w2"], "w2": []},
                            node_tasks={"source": [1], "w1": list(range(1, last)), "w2": [last]})
    s = run(cluster, None, duration=4.0)
    assert_nothing_lost(s)
    assert s["per_node"]["w2"]["tasks_run"].get(str(last), 0) > 0


def test_unreachable_task_is_refused_at_load(tmp_path, tiny_package):
    from mdiexit.package import load_package

    last = load_package(tiny_package).num_tasks
    path = write_cluster(tmp_path / "c.yaml", tiny_package, [20, 20, 20], mode="mdi",
                         neighbours={"source": ["w1"], "w1": ["source"], "w2": ["source"]},
                         node_tasks={"source": [1], "w1": list(range(1, last)), "w2": [last]})
    with pytest.raises(ConfigError, match=rf"task {last} is unreachable.*w2"):
        run(path, None, duration=1.0)


@pytest.mark.parametrize("insecure", [False, True], ids=["curve", "insecure"])
def test_a_new_device_joins_and_gets_work(tmp_path, tiny_package, insecure):
    from mdiexit.runtime.ports import free_ports

    cluster = write_cluster(tmp_path / "c.yaml", tiny_package, [4000, 4000])  # too slow for 60 items/s
    port = free_ports(1)[0]

    def action(live: LiveRun):
        wait_for(lambda: live.source.ledger.completed >= 20, what="20 results")
        live.join("newcomer", port, slowdown=200)
        wait_for(lambda: "newcomer" in live.source.last_heard, what="the newcomer's first report")

    s = run(cluster, action, duration=8.0, rate=60.0, insecure=insecure)
    assert_nothing_lost(s)
    assert any(e["node"] == "newcomer" and e["kind"] == "joined" for e in s["node_failures"])
    assert sum(s["per_node"]["newcomer"]["tasks_run"].values()) > 0


@pytest.mark.skipif(not __import__("mdiexit.emulation.netns", fromlist=["x"]).namespaces_supported()[0],
                    reason="network namespaces unavailable (needs root and iproute2 on Linux)")
def test_worker_cut_off_by_the_network(tmp_path, tiny_package):
    import subprocess

    cluster = write_cluster(tmp_path / "c.yaml", tiny_package, SLOW, dead_after_ms=400)

    def set_link(ns: str, state: str) -> None:
        veths = subprocess.run(["ip", "-n", ns, "-o", "link", "show", "type", "veth"], capture_output=True,
                               text=True, timeout=10, check=True).stdout
        dev = veths.split(":")[1].strip().split("@")[0]
        subprocess.run(["ip", "-n", ns, "link", "set", "dev", dev, state], check=True, timeout=10)

    def action(live: LiveRun):
        wait_for(lambda: live.source.ledger.completed >= 40, what="40 results")
        set_link(live.netns["w1"], "down")
        wait_for(lambda: live.source.phase == "done", timeout=120, what="the end of the run")
        set_link(live.netns["w1"], "up")

    s = run(cluster, action, rate=100.0, net="namespaces")
    assert_nothing_lost(s)
    assert any(e["node"] == "w1" and e["kind"] == "silent" for e in s["node_failures"])
