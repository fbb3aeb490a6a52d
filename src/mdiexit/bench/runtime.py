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


def hop_ms(pkg: Package, task: int, x: np.ndarray, repeats: int) -> float:
    """Median ms of encode + send + receive + decode + validate of one DATA message over TCP loopback."""
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
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
        hop = hop_ms(pkg, t.index, np.ascontiguousarray(x, dtype=np.float32), repeats)
        rows.append({"into_task": t.index, "bytes": int(x.nbytes), "hop_ms": hop, "task_ms_emulated": compute,
                     "fraction": hop / compute})
    return rows


def scaling(package: Path, slowdown: float, duration_s: float, counts: tuple[int, ...] = (1, 2, 4)) -> list[dict]:
    from mdiexit.runtime.launch import RunOptions, run_cluster

    pkg = load_package(package)
    engine = OrtEngine(pkg, threads=1)
    inputs = task_inputs(pkg, engine, batch=1)
    full_ms = sum(median_ms(engine, t.index, x, 20) for t, x in zip(pkg.tasks, inputs, strict=True))
    compute = pkg.manifest.get("default_operating_point", {}).get("compute_fraction", 1.0)
    capacity_1 = 1000.0 / (full_ms * slowdown * compute)  # items/s of one worker at the default thresholds
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for n in counts:
            dispatch_only = {"tasks": []}  # the source only dispatches; n equal workers compute
            cluster = write_cluster(Path(d) / f"scale{n}.yaml", package=package, mode="mdi-exit",
                                    nodes=local_nodes([dispatch_only] + [{"slowdown": slowdown}] * n))
            opts = RunOptions(rate=1.5 * capacity_1 * n, duration_s=duration_s, warmup_s=min(3.0, duration_s / 3),
                              live=False, drain_timeout_s=60)
            s = run_cluster(cluster, opts).summary
            rows.append({"workers": n, "throughput_per_s": s["throughput_per_s"], "lost": s["lost"],
                         "accuracy": s["accuracy"], "admitted": s["admitted"]})
            print(f"  {n} worker(s): {s['throughput_per_s']:.1f} items/s (admitted {s['admitted']}, lost {s['lost']}"
                  f"{', ' + s['error'] if s.get('error') else ''})", file=sys.stderr)
    base = rows[0]["throughput_per_s"]
    for r in rows:
        r["efficiency"] = r["throughput_per_s"] / (r["workers"] * base) if base else 0.0
    return rows


def bench_runtime(cluster_path: Path, repeats: int = 200, duration_s: float = 12.0, slowdown: float | None = None,
                  out: Path | None = None) -> dict:
    cluster = load_cluster(cluster_path)
    pkg = load_package(cluster.package)
    f = slowdown or statistics.median(n.slowdown for n in cluster.workers)
    print(f"per-hop overhead (encode, send, receive, decode, validate) vs. task compute at slowdown {f:g}, "
          f"median of {repeats}:")
    hops = hop_overhead(pkg, f, repeats)
    print(f"{'into task':>9} {'bytes':>8} {'hop ms':>8} {'task ms':>8} {'fraction':>9}")
    for r in hops:
        print(f"{r['into_task']:>9} {r['bytes']:>8} {r['hop_ms']:>8.3f} {r['task_ms_emulated']:>8.2f} "
              f"{r['fraction']:>8.1%}")
    print(f"\nmdi-exit scaling on equal workers (slowdown {f:g}), {duration_s:g} s overloaded runs:")
    scale = scaling(cluster.package, f, duration_s)
    for r in scale:
        print(f"  {r['workers']} worker(s): {r['throughput_per_s']:7.1f} items/s, efficiency {r['efficiency']:.0%}")
    result = {"cluster": str(cluster_path), "slowdown": f, "hops": hops, "scaling": scale}
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
    return result
