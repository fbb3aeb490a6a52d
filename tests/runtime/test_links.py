"""Measured links (DESIGN §7): with no bandwidth in the cluster file, a node learns that its uplink is slow from
its peers' acknowledgements, and the offloading rule sends less over it."""

from __future__ import annotations

import pytest

from mdiexit.config import write_cluster
from mdiexit.runtime.launch import RunOptions, run_cluster
from mdiexit.runtime.ports import local_nodes

pytestmark = pytest.mark.cluster

SLOW_MBPS = 0.4  # w1's uplink: task 1's 6,272-byte features take 125 ms, far more than running task 2 locally


def slow_uplink_cluster(path, package):
    """The source only dispatches (it is very slow); w1 and w2 are equal, run task 1 and then either run the rest
    themselves or send the features to w3, a fast helper without task 1. w1's uplink is slow, w2's is not; the file
    gives no bandwidth at all (w1's is only emulated, by its schedule)."""
    nodes = local_nodes([{"slowdown": 3000}, {"slowdown": 1000, "bandwidth_schedule": [[0, SLOW_MBPS]]},
                         {"slowdown": 1000}, {"slowdown": 2, "tasks": [2, 3, 4]}], latency_ms=1)
    return write_cluster(path, package=package, mode="mdi-exit", nodes=nodes,
                         neighbours={"source": ["w1", "w2"], "w1": ["w3"], "w2": ["w3"]})


def check_slow_uplink_avoided(s: dict) -> None:
    assert s["lost"] == 0 and s["duplicates"] == 0 and s["bad_messages"] == 0 and not s["crashed"]
    links, nodes = s["links"], s["per_node"]
    slow, fast = links["w1"]["w3"]["bytes_sent"], links["w2"]["w3"]["bytes_sent"]
    assert fast > 0 and slow < 0.5 * fast, (slow, fast)
    # w1 kept its items' task 2 for itself; w2 handed it to w3. As shares of the items each took up (task 1): how many
    # items the source sends each depends on their backlogs, and once w2 took 120 to w1's 25
    w1, w2 = nodes["w1"]["tasks_run"], nodes["w2"]["tasks_run"]
    assert w1.get("2", 0) / max(1, w1.get("1", 0)) > w2.get("2", 0) / max(1, w2.get("1", 0)), (w1, w2)
    estimate = links["w1"]["w3"]["estimated_mbps"]
    assert estimate is not None and estimate < 10 * SLOW_MBPS  # learnt, from nothing configured
    assert links["w2"]["w3"]["estimated_mbps"] is None or links["w2"]["w3"]["estimated_mbps"] > estimate
    assert 0 < s["estimation_overhead"]["bytes"] < 0.05 * sum(n["bytes_sent"] for n in nodes.values())


def test_a_slow_uplink_is_learnt_and_avoided(tmp_path, tiny_package):
    path = slow_uplink_cluster(tmp_path / "c.yaml", tiny_package)
    opts = RunOptions(mode="mdi-exit", rate=40.0, duration_s=4.0, warmup_s=0.5, live=False, limit_items=300,
                      drain_timeout_s=30)
    check_slow_uplink_avoided(run_cluster(path, opts).summary)


def test_a_kernel_shaped_slow_uplink_is_learnt_and_avoided(tmp_path, tiny_package):
    from mdiexit.emulation.netns import namespaces_supported

    ok, why = namespaces_supported()
    if not ok:
        pytest.skip(f"network namespaces unavailable: {why}")
    path = slow_uplink_cluster(tmp_path / "c.yaml", tiny_package)
    opts = RunOptions(net="namespaces", mode="mdi-exit", rate=40.0, duration_s=4.0, warmup_s=0.5, live=False,
                      limit_items=300, drain_timeout_s=30)
    check_slow_uplink_avoided(run_cluster(path, opts).summary)


def test_a_burst_on_an_idle_paced_link_waits_out_its_latency_once():
    """Twenty messages queued at once on a fast, idle egress each arrive one latency after they were sent, in
    order: the loop does not wait the latency again for each message that left while it sent the ones ahead."""
    import threading
    import time

    import zmq

    from mdiexit.clock import REAL_TIME
    from mdiexit.runtime.links import Egress, Link
    from mdiexit.runtime.loop import Loop

    now = REAL_TIME.now
    ctx = zmq.Context()
    inbox = ctx.socket(zmq.PULL)
    port = inbox.bind_to_random_port("tcp://127.0.0.1")
    loop, stop = Loop(REAL_TIME), threading.Event()
    link = Link(ctx, "b", f"tcp://127.0.0.1:{port}", Egress(100e6), latency_s=0.1, loop=loop)
    runner = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    runner.start()
    try:
        t0 = now()

        def burst() -> None:
            for i in range(20):
                link.send([str(i).encode()], now())

        loop.post(burst)
        got, deadline = [], time.monotonic() + 10
        while len(got) < 20 and time.monotonic() < deadline:
            if inbox.poll(100):
                got.append((int(inbox.recv()), now() - t0))
        assert [i for i, _ in got] == list(range(20))
        assert got[0][1] >= 0.1 - loop.early_s  # the latency is waited out
        assert got[-1][1] < 1.0, got  # once for the burst, not 20 x 0.1 s one after the other
    finally:
        stop.set()
        loop.wake()
        runner.join(timeout=5)
        loop.close()
        link.close()
        inbox.close(linger=0)
        ctx.term()


def test_what_waits_when_the_loop_stops_leaves_at_close():
    """A message still waiting out its latency when the node's loop stops (a final STATE) is sent at close."""
    import zmq

    from mdiexit.clock import REAL_TIME
    from mdiexit.runtime.links import Egress, Link
    from mdiexit.runtime.loop import Loop

    ctx = zmq.Context()
    inbox = ctx.socket(zmq.PULL)
    port = inbox.bind_to_random_port("tcp://127.0.0.1")
    link = Link(ctx, "b", f"tcp://127.0.0.1:{port}", Egress(None), latency_s=60.0, loop=Loop(REAL_TIME))
    try:
        link.send([b"final"], REAL_TIME.now())
        assert link.pending() == 1  # an hour's latency: it waits for a timer that never comes
        link.close()
        assert inbox.poll(5000) and inbox.recv() == b"final"
    finally:
        inbox.close(linger=0)
        ctx.term()
