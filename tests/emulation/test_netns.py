"""`--net namespaces` (DESIGN §7): namespaces, veths and a bridge in 10.77.0.0/24, shaped with tc tbf.

Needs root and iproute2 on Linux; skipped otherwise. Every test removes what it created.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest
import yaml

from mdiexit.config import cluster_from_dict, write_cluster
from mdiexit.emulation.netns import (
    BRIDGE_ADDRESS,
    NamespaceError,
    NamespaceNetwork,
    cleanup_stale,
    default_prefix,
    list_links,
    list_namespaces,
    namespaces_supported,
    tbf_args,
)
from mdiexit.runtime.ports import local_nodes

SUPPORTED, WHY = namespaces_supported()
pytestmark = [pytest.mark.root, pytest.mark.cluster,
              pytest.mark.skipif(not SUPPORTED, reason=f"network namespaces unavailable: {WHY}")]

DEAD_PREFIX = "mxzzzzz"  # pid 60466175: above any pid_max, so its owner is never alive


def cluster(bandwidths=(8, 8, 16), package="/nonexistent"):
    nodes = local_nodes([{"bandwidth_mbps": bw} for bw in bandwidths], latency_ms=1)
    return cluster_from_dict({"package": str(package), "nodes": nodes})


def leftovers(prefix):
    return [x for x in list_links() + list_namespaces() if x.startswith(f"{prefix}-")]


def test_tbf_arguments():
    assert tbf_args(8) == ["tbf", "rate", "8000000bit", "burst", "32768", "latency", "50ms"]
    assert tbf_args(1000)[4] == str(1_000_000_000 // 8 // 250)  # fast links get a bigger burst


def test_unsupported_says_why(monkeypatch, tmp_path):
    from mdiexit.runtime.launch import RunOptions, run_cluster

    monkeypatch.setattr("os.geteuid", lambda: 1000)
    ok, why = namespaces_supported()
    assert not ok and "needs root" in why
    with pytest.raises(NamespaceError, match="needs root"):
        run_cluster(tmp_path / "unused.yaml", RunOptions(net="namespaces"))


# ------------------------------------------------------------------ (a) setup / teardown

def test_setup_layout_and_teardown():
    c = cluster()
    prefix = default_prefix()
    with NamespaceNetwork(c) as net:
        nodes, rewritten, path = net  # also unpacks
        assert nodes == {"source": (None, BRIDGE_ADDRESS), "w1": (f"{prefix}-w1", "10.77.0.2"),
                         "w2": (f"{prefix}-w2", "10.77.0.3")}
        assert [n.host for n in rewritten.nodes] == [BRIDGE_ADDRESS, "10.77.0.2", "10.77.0.3"]
        assert [n.bandwidth_mbps for n in rewritten.nodes] == [8, 8, 16]  # the offloading rule still knows them
        assert yaml.safe_load(path.read_text())["nodes"][1]["host"] == "10.77.0.2"
        assert {f"{prefix}-br", f"{prefix}-0h", f"{prefix}-1h"} <= set(list_links())
        assert {f"{prefix}-w1", f"{prefix}-w2"} <= set(list_namespaces())
        assert all(len(x) <= 15 for x in list_links())
        qdisc = subprocess.run(["tc", "-n", f"{prefix}-w2", "qdisc", "show", "dev", f"{prefix}-1n"],
                               capture_output=True, text=True, timeout=5).stdout
        assert "tbf" in qdisc and "16Mbit" in qdisc
        qdisc = subprocess.run(["tc", "qdisc", "show", "dev", f"{prefix}-br"], capture_output=True, text=True,
                               timeout=5).stdout
        assert "tbf" in qdisc and "8Mbit" in qdisc
        with pytest.raises(NamespaceError, match="already in use"):  # one run at a time holds the subnet
            NamespaceNetwork(c, prefix="mxq").__enter__()
        assert not leftovers("mxq")
    assert not leftovers(prefix)
    assert not path.exists()


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_teardown_on_exception(exc):
    prefix = default_prefix()
    with pytest.raises(exc):
        with NamespaceNetwork(cluster()):
            assert leftovers(prefix)
            raise exc("boom")
    assert not leftovers(prefix)


def test_cleanup_stale_removes_a_crashed_run_only():
    crashed = NamespaceNetwork(cluster(), prefix=DEAD_PREFIX)
    crashed.__enter__()  # and never exits, as if its process had died
    try:
        assert len(leftovers(DEAD_PREFIX)) == 5  # bridge, 2 veths, 2 namespaces
        assert cleanup_stale() and not leftovers(DEAD_PREFIX)
        with NamespaceNetwork(cluster()):  # the subnet is free again; a live owner's network is kept
            assert not cleanup_stale() and leftovers(default_prefix())
    finally:
        crashed.close()
    assert not leftovers(default_prefix())


# ------------------------------------------------------------------ (b) a real cluster run

def test_cluster_run_in_namespaces(tmp_path, tiny_package):
    from mdiexit.runtime.launch import RunOptions, run_cluster

    # the tasks are split so that items must cross source -> w1 -> w2 and come back: every path is used
    nodes = local_nodes([{"tasks": t} for t in ([1, 2], [3], [4])], slowdown=3, bandwidth_mbps=20, latency_ms=1)
    path = write_cluster(tmp_path / "cluster.yaml", package=tiny_package, mode="mdi-exit", nodes=nodes)
    opts = RunOptions(net="namespaces", mode="mdi-exit", rate=100.0, duration_s=2.0, warmup_s=0.5, live=False,
                      limit_items=300, drain_timeout_s=30)
    s = run_cluster(path, opts).summary
    assert s["admitted"] > 100
    assert s["completed"] == s["admitted"] and s["lost"] == 0 and s["duplicates"] == 0
    assert s["bad_messages"] == 0 and not s["crashed"] and not s.get("error")
    assert s["config"]["net"] == "namespaces" and s["config"]["cluster"] == str(path)
    assert s["per_node"]["w1"]["tasks_run"]["3"] > 0 and s["per_node"]["w2"]["tasks_run"]["4"] > 0
    assert not leftovers(default_prefix())


def test_namespaces_refuse_a_remote_source(tmp_path):
    from mdiexit.runtime.launch import RunOptions, run_cluster

    path = write_cluster(tmp_path / "c.yaml", package="/nonexistent", nodes=[{"name": "s", "role": "source",
                                                                              "port": 5000}])
    with pytest.raises(NamespaceError, match="mdiexit source"):
        run_cluster(path, RunOptions(net="namespaces"), spawn=False)


# ------------------------------------------------------------------ (c) the kernel shapes the bandwidth

NBYTES = 1_000_000  # 8 Mbit: 1 s at 8 Mbit/s

SENDER = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"x" * int(sys.argv[3]))
s.shutdown(socket.SHUT_WR)
s.recv(1)
"""

RECEIVER = """
import socket, sys, time
srv = socket.create_server((sys.argv[1], 0))
srv.settimeout(10)
print(srv.getsockname()[1], flush=True)
c, _ = srv.accept()
c.settimeout(10)
n, first = 0, None
while chunk := c.recv(65536):
    first = first or time.monotonic()
    n += len(chunk)
print(n, time.monotonic() - first, flush=True)
"""


def _receive(conn: socket.socket, out: dict) -> None:
    n, first = 0, None
    while chunk := conn.recv(65536):
        first = first or time.monotonic()
        n += len(chunk)
    out.update(n=n, seconds=time.monotonic() - first)
    conn.close()


@pytest.mark.parametrize("direction", ["worker egress", "source egress"])
def test_tbf_shapes_one_megabyte_at_8_mbit_to_about_one_second(direction):
    with NamespaceNetwork(cluster(bandwidths=(8, 8, 8))) as net:
        ns, addr = net.nodes["w1"]
        if direction == "worker egress":  # w1's namespace -> the root namespace
            srv = socket.create_server((BRIDGE_ADDRESS, 0))
            srv.settimeout(10)
            out: dict = {}
            sender = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SENDER, BRIDGE_ADDRESS,
                                       str(srv.getsockname()[1]), str(NBYTES)])
            try:
                conn, _ = srv.accept()
                conn.settimeout(10)
                t = threading.Thread(target=_receive, args=(conn, out))
                t.start()
                t.join(timeout=15)
                assert sender.wait(timeout=15) == 0
            finally:
                sender.kill()
                srv.close()
            n, seconds = out["n"], out["seconds"]
        else:  # the root namespace -> w1's namespace, through the bridge
            receiver = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", RECEIVER, addr],
                                        stdout=subprocess.PIPE, text=True)
            try:
                port = int(receiver.stdout.readline())
                with socket.create_connection((addr, port), timeout=10) as s:
                    s.sendall(b"x" * NBYTES)
                    s.shutdown(socket.SHUT_WR)
                    stdout, _ = receiver.communicate(timeout=15)
                n, seconds = int(stdout.split()[0]), float(stdout.split()[1])
            finally:
                receiver.kill()
    assert n == NBYTES
    assert 0.75 <= seconds <= 1.25, f"{NBYTES} bytes took {seconds:.3f} s at 8 Mbit/s"
