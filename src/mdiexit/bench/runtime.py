"""`mdiexit bench runtime`: the cost of a network hop against a task's compute, and how mdi-exit scales.

1. Per-hop overhead: encode a DATA message carrying a real boundary's features, send it over a real
   ZeroMQ TCP loopback connection, receive, decode and validate it; median of repeats. Compared with the
   task's compute time at the cluster file's emulated speeds (measured ONNX Runtime time x slowdown).
2. Scaling: `mdi-exit` throughput on 1, 2 and 4 equal workers (the source only dispatches), each run
   offered 1.5x its estimated capacity (from measured task times, the slowdown and the default thresholds'
   expected compute), so that throughput is the cluster's capacity. Efficiency = T_n / (n x T_1).
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import zmq

from mdiexit.bench.engine import median_ms, task_inputs
from mdiexit.config import load_cluster, write_cluster
from mdiexit.engine import OrtEngine
from mdiexit.package import Package, load_package
from mdiexit.protocol.codec import check_arrays, decode, describe, encode
from mdiexit.protocol.messages import Data
from mdiexit.runtime.ports import local_nodes
from mdiexit.util import median_s


def hop_ms(pkg: Package, task: int, x: np.ndarray, repeats: int, curve: bool = False) -> float:
    """Median ms of encode + send + receive + decode + validate of one DATA message over TCP loopback; with
    ``curve``, over a CurveZMQ-encrypted connection, as between cluster nodes."""
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    if curve:
        server_pub, server_sec = zmq.curve_keypair()
        pull.curve_secretkey, pull.curve_publickey, pull.curve_server = server_sec, server_pub, True
        push.curve_publickey, push.curve_secretkey = zmq.curve_keypair()
        push.curve_serverkey = server_pub
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push.connect(f"tcp://127.0.0.1:{port}")
    ids = itertools.count()

    def hop() -> None:
        msg = Data(item_id=next(ids), task=task, admitted_at=0.0, thresholds=pkg.default_thresholds, sender="bench",
                   backlog_s=0.01, arrays=[describe("x", x)], timings=[("a", 1, 0.001)])
        push.send_multipart(encode(msg, [x]), copy=False)
        got, arrays = decode(pull.recv_multipart(copy=False))
        check_arrays(got, arrays, pkg)

    try:
        return 1000 * median_s(hop, repeats, warmup=5)
    finally:
        push.close(0)
        pull.close(0)
        ctx.term()


def hop_overhead(pkg: Package, slowdown: float, repeats: int) -> list[dict]:
    engine = OrtEngine(pkg, threads=1)
    inputs = task_inputs(pkg, engine, batch=1)
    rows = []
    for t, x in zip(pkg.tasks[1:], inputs[1:], strict=True):  # hops carry features into tasks 2..K
        compute = median_ms(engine, t.index, x, repeats) * slowdown
        x = np.ascontiguousarray(x, dtype=np.float32)
        hop, hop_curve = hop_ms(pkg, t.index, x, repeats), hop_ms(pkg, t.index, x, repeats, curve=True)
        rows.append({"into_task": t.index, "bytes": int(x.nbytes), "hop_ms": hop, "hop_ms_curve": hop_curve,
                     "task_ms_emulated": compute, "fraction": hop / compute,
                     "curve_extra_fraction": (hop_curve - hop) / compute})
    return rows


def scaling(package: Path, slowdown: float, duration_s: float, counts: tuple[int, ...] = (1, 2, 4)) -> list[dict]:
    from mdiexit.runtime.device import profile_host
    from mdiexit.runtime.launch import RunOptions, run_cluster

    pkg = load_package(package)
    compute = pkg.manifest.get("default_operating_point", {}).get("compute_fraction", 1.0)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for n in counts:
            dispatch_only = {"tasks": []}  # the source only dispatches; n equal workers compute
            cluster = write_cluster(Path(d) / f"scale{n}.yaml", package=package, mode="mdi-exit",
                                    nodes=local_nodes([dispatch_only] + [{"slowdown": slowdown}] * n))
            # one worker's items/s at the default thresholds, from the task times its devices will emulate (the
            # pinned ones with --device-profile): timed here instead, a slower host would offer less than they take
            times = profile_host(pkg, load_cluster(cluster), threads=1)
            full_s = sum(times["task", t.index][1] for t in pkg.tasks)
            capacity_1 = 1.0 / (full_s * slowdown * compute)
            opts = RunOptions(rate=1.5 * capacity_1 * n, duration_s=duration_s, warmup_s=min(3.0, duration_s / 3),
                              live=False, drain_timeout_s=60)
            s = run_cluster(cluster, opts).summary
            rows.append({"workers": n, "throughput_per_s": s["throughput_per_s"], "lost": s["lost"],
                         "accuracy": s["accuracy"], "admitted": s["admitted"],
                         "ideal_throughput_per_s": s.get("ideal_throughput_per_s"),
                         "efficiency_vs_ideal": s.get("efficiency")})
            print(f"  {n} worker(s): {s['throughput_per_s']:.1f} items/s (admitted {s['admitted']}, lost {s['lost']}"
                  f"{', ' + s['error'] if s.get('error') else ''})", file=sys.stderr)
    base = rows[0]["throughput_per_s"]
    for r in rows:
        r["efficiency"] = r["throughput_per_s"] / (r["workers"] * base) if base else 0.0
    return rows


def security_cost(cluster_path: Path, rate: float, duration_s: float) -> list[dict]:
    """The cluster at fixed admission (the package's thresholds) above its capacity, so that the throughput is
    the capacity: CurveZMQ against --insecure, side by side."""
    from mdiexit.runtime.launch import RunOptions, run_cluster

    rows = []
    for insecure in (False, True, False, True):  # interleaved, so that drift on the host hits both alike
        opts = RunOptions(rate=rate, duration_s=duration_s, warmup_s=min(5.0, duration_s / 4), live=False,
                          insecure=insecure)
        s = run_cluster(cluster_path, opts).summary
        rows.append({"links": "insecure" if insecure else "curve", "throughput_per_s": s["throughput_per_s"],
                     "p95_ms": s["latency_ms"]["p95"], "lost": s["lost"]})
        print(f"  {rows[-1]['links']:>8}: {s['throughput_per_s']:.1f} items/s, p95 {s['latency_ms']['p95']:.0f} ms",
              file=sys.stderr)
    return rows


def bench_runtime(cluster_path: Path, repeats: int = 200, duration_s: float = 12.0, slowdown: float | None = None,
                  out: Path | None = None, security_rate: float = 1000.0) -> dict:
    cluster = load_cluster(cluster_path)
    pkg = load_package(cluster.package)
    f = slowdown or statistics.median(n.slowdown for n in cluster.workers)
    print(f"per-hop overhead (encode, send, receive, decode, validate) vs. task compute at slowdown {f:g}, "
          f"median of {repeats}:")
    hops = hop_overhead(pkg, f, repeats)
    print(f"{'into task':>9} {'bytes':>8} {'hop ms':>8} {'curve ms':>9} {'task ms':>8} {'fraction':>9} "
          f"{'curve adds':>10}")
    for r in hops:
        print(f"{r['into_task']:>9} {r['bytes']:>8} {r['hop_ms']:>8.3f} {r['hop_ms_curve']:>9.3f} "
              f"{r['task_ms_emulated']:>8.2f} {r['fraction']:>8.1%} {r['curve_extra_fraction']:>10.2%}")
    print(f"\n{cluster_path} offered a fixed {security_rate:g} items/s (above capacity: throughput = capacity), "
          f"CurveZMQ vs insecure, {duration_s:g} s runs:")
    security = security_cost(cluster_path, security_rate, duration_s)
    by = {k: statistics.median(r["throughput_per_s"] for r in security if r["links"] == k)
          for k in ("curve", "insecure")}
    print(f"  median: curve {by['curve']:.1f}, insecure {by['insecure']:.1f} items/s "
          f"(ratio {by['curve'] / max(by['insecure'], 1e-9):.3f})")
    print(f"\nmdi-exit scaling on equal workers (slowdown {f:g}), {duration_s:g} s overloaded runs:")
    scale = scaling(cluster.package, f, duration_s)
    for r in scale:
        ideal = f", {r['efficiency_vs_ideal']:.0%} of the ideal {r['ideal_throughput_per_s']:.1f}" \
            if r.get("efficiency_vs_ideal") else ""
        print(f"  {r['workers']} worker(s): {r['throughput_per_s']:7.1f} items/s, efficiency {r['efficiency']:.0%}"
              f" (T_n / n T_1){ideal}")
    result = {"cluster": str(cluster_path), "slowdown": f, "hops": hops, "scaling": scale, "security": security,
              "security_ratio": by["curve"] / max(by["insecure"], 1e-9)}
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
    return result
