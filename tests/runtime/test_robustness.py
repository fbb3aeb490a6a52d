"""A live node survives garbage; a crashed node is reported by name; Ctrl-C leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdiexit.config import load_cluster
from mdiexit.package import load_package
from mdiexit.protocol.codec import decode, describe, encode
from mdiexit.protocol.messages import Data, Result
from mdiexit.runtime.node import NodeProcess

pytestmark = pytest.mark.cluster


def port_is_free(port: int) -> bool:
    """No process listens on it (connections in TIME_WAIT don't count, as for any server's restart)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, timeout=10)
    return [int(x) for x in out.stdout.split()]


def valid_frames(pkg, item_id: int) -> list[bytes]:
    x = np.zeros((1, *pkg.tasks[-1].input_shape), np.float32)
    msg = Data(item_id=item_id, task=pkg.num_tasks, admitted_at=0.0, thresholds=pkg.default_thresholds,
               sender="fuzzer", arrays=[describe("x", x)])
    return [bytes(f) for f in encode(msg, [x])]


frame_lists = st.lists(st.binary(max_size=200), min_size=0, max_size=4)


def test_live_node_survives_random_and_mangled_frames(cluster_file, tiny_package):
    cluster = load_cluster(cluster_file)
    pkg = load_package(tiny_package)
    ctx = zmq.Context()
    source_inbox = ctx.socket(zmq.PULL)  # stands in for the source, to catch the node's RESULTs
    source_inbox.bind(cluster.source.address)
    node = NodeProcess(cluster, "w1", pkg)
    node.start()
    push = ctx.socket(zmq.PUSH)
    push.connect(cluster.node("w1").address)
    sent_bad = 0
    try:
        good = valid_frames(pkg, 1)

        @settings(max_examples=150, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(frames=frame_lists, cut=st.integers(0, 400), flip=st.integers(0, 255))
        def fuzz(frames, cut, flip):
            nonlocal sent_bad
            header = bytearray(good[0])
            header[cut % len(header)] ^= flip or 1
            for bad in ([*frames] or [b""], [bytes(header), good[1]], [good[0]], [good[0], good[1][:-4]],
                        [good[0], good[1], b"extra"]):
                push.send_multipart(bad)
                sent_bad += 1

        fuzz()
        push.send_multipart(valid_frames(pkg, 42))  # the node still works afterwards
        poller = zmq.Poller()
        poller.register(source_inbox, zmq.POLLIN)
        deadline = time.monotonic() + 20
        result = None
        while time.monotonic() < deadline and result is None:
            if poller.poll(200):
                msg, _ = decode(source_inbox.recv_multipart())
                if isinstance(msg, Result) and msg.item_id == 42:
                    result = msg
        assert result is not None and result.exit == pkg.num_tasks
        assert node.threads[0].is_alive() and node.threads[1].is_alive()
        # mangled headers may still decode to a valid message (a flipped bit in a float); most are rejected
        assert node.bad_messages >= 0.6 * sent_bad
    finally:
        node.close()
        push.close(0)
        source_inbox.close(0)
        ctx.term()


def start_run(cluster_file, tmp_path, duration=30):
    cmd = [sys.executable, "-m", "mdiexit.cli", "run", "--cluster", str(cluster_file), "--rate", "50",
           "--duration", str(duration), "--out", str(tmp_path / "out")]
    # a job started in the background by a shell inherits SIGINT ignored; Ctrl-C must reach the run here
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_until_running(proc, n_workers, min_done=20, timeout=90):
    """Read the live view until `min_done` results are in; returns the worker pids."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = re.search(r" done (\d+)", line)
        if m and int(m.group(1)) >= min_done:
            kids = children_of(proc.pid)
            assert len(kids) == n_workers
            return kids
        if not line and proc.poll() is not None:
            break
    raise AssertionError("the run did not get under way")


def alive(pid: int) -> bool:
    try:
        return "zombie" not in open(f"/proc/{pid}/status").read()
    except FileNotFoundError:
        return False


def test_crashed_worker_is_reported_and_the_run_goes_on(cluster_file, tmp_path):
    cluster = load_cluster(cluster_file)
    proc = start_run(cluster_file, tmp_path, duration=8)
    try:
        kids = wait_until_running(proc, 2)
        w1 = next(k for k in kids if "w1" in open(f"/proc/{k}/cmdline").read())
        os.kill(w1, signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, out  # nothing was lost
    assert "node w1 crashed" in out and "w1:DOWN" in out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["lost"] == 0 and summary["crashed"] == ["w1"]
    assert not [k for k in kids if alive(k)]
    assert all(port_is_free(n.port) for n in cluster.nodes)


def test_ctrl_c_leaves_no_orphans_or_ports(cluster_file, tmp_path):
    cluster = load_cluster(cluster_file)
    proc = start_run(cluster_file, tmp_path)
    try:
        kids = wait_until_running(proc, 2)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and [k for k in kids if alive(k)]:
        time.sleep(0.05)
    assert not [k for k in kids if alive(k)]
    assert all(port_is_free(n.port) for n in cluster.nodes)
