"""`mdiexit bench serve`: a service under load, as its clients see it (DESIGN §10).

A copy of the cluster file gets free ports, a client_port and fresh keys; `mdiexit serve` (rate adaptation)
runs on it as its own process. The capacity is measured first: 15 seconds of saturating load (PROBE_OVER_LIMIT
times the planner's limit), the results per second of the last eight. Then each load (a multiple of that
capacity) is offered open-loop for ``duration_s`` from ``clients`` client processes, each with its own
connection. Per load: client-side results per second, p50/p95/p99 of the client-side latency of results, the
share of requests rejected, expired or failed, and the service process's CPU per request. Every request is
answered; none may be lost. With a dilation k the cluster runs k times slower and every figure is read back in
its own time (mdiexit.clock).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, wait
from pathlib import Path

import numpy as np

from mdiexit.config import cluster_dict, load_cluster, write_cluster
from mdiexit.data import load_test_split
from mdiexit.package import load_package
from mdiexit.planner import limit_at_thresholds
from mdiexit.runtime.device import planner_costs
from mdiexit.runtime.ports import free_ports
from mdiexit.security import create_client_key, create_keys
from mdiexit.util import say, shown_path

PROBE_OVER_LIMIT = 1.5  # the capacity is measured under this much more than the planner's limit: saturated, but
# not flooded (a flood measures the host's own limit on reading requests instead of the cluster's)


def _service_cluster(cluster_path: Path, work: Path) -> Path:
    d = cluster_dict(load_cluster(cluster_path))
    ports = free_ports(len(d["nodes"]) + 1)
    for node, port in zip(d["nodes"], ports, strict=False):
        node["port"] = port
        if node.get("role") == "source":
            node["client_port"] = ports[-1]
    keys = work / "keys"
    create_keys([n["name"] for n in d["nodes"]], keys)
    create_client_key(keys)
    d["keys_dir"] = str(keys)
    return write_cluster(work / "cluster.yaml", d)


def _client(path: Path, images: np.ndarray, rate: float, duration_s: float, k: int, clients: int) -> list[tuple]:
    """One client process: open-loop at ``rate`` for ``duration_s``. Rows: (outcome, latency s, done at s)."""
    from mdiexit.client import Client

    rows: list[tuple] = []
    lock = threading.Lock()
    with Client.from_cluster(path, timeout_s=120) as c:
        futures: list[Future] = []
        start = time.monotonic()
        while time.monotonic() < start + duration_s:
            due = int((time.monotonic() - start) * rate)
            while len(futures) < due:
                sent = time.monotonic()
                f = c.submit(images[(k + len(futures) * clients) % len(images)])
                f.add_done_callback(lambda f, sent=sent: _record(f, sent, start, rows, lock))
                futures.append(f)
            time.sleep(0.002)
        wait(futures, timeout=180)
    return rows


def _offer(path: Path, images: np.ndarray, rate: float, duration_s: float, clients: int) -> list[tuple]:
    """Open-loop load: ``rate`` requests per second for ``duration_s``, from ``clients`` processes, each with
    its own connection (so that the clients' own CPU does not serialise on one interpreter)."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(clients) as pool:
        parts = pool.starmap(_client, [(path, images, rate / clients, duration_s, k, clients) for k in range(clients)])
    return [row for part in parts for row in part]


def _record(f: Future, sent: float, start: float, rows: list, lock: threading.Lock) -> None:
    e = f.exception()
    outcome = "result" if e is None else getattr(e, "outcome", "timeout")
    t = time.monotonic()
    with lock:
        rows.append((outcome, t - sent, t - start))


def _figures(rows: list[tuple], duration_s: float, offered_x: float, offered_rate: float, cpu_s: float,
             k: float) -> dict:
    """One load's figures in the cluster's own time: rates x k, times / k (k: the dilation)."""
    lat = np.array([s for o, s, _ in rows if o == "result"]) * 1000 / k
    n = max(1, len(rows))
    in_window = sum(1 for o, _, done in rows if o == "result" and done <= duration_s)  # not the backlog after it
    out = {"offered_x": offered_x, "requests_per_s": offered_rate * k, "requests": len(rows),
           "results_per_s": in_window / duration_s * k,
           **{f"p{q}_ms": float(np.percentile(lat, q)) if len(lat) else None for q in (50, 95, 99)},
           "service_cpu_us_per_request": 1e6 * cpu_s / n}
    for kind in ("rejected", "expired", "failed", "error", "timeout"):
        out[f"{kind}_fraction"] = sum(1 for o, *_ in rows if o == kind) / n
    return out


def cpu_by_outcome(loads: list[dict], duration_s: float, k: float) -> dict[str, float] | None:
    """The service's CPU per result and per rejection, fitted by least squares over the loads: each load's CPU is
    results x a + rejections x b (what it spends on errors and expiries is too rare here to fit)."""
    rows = [(f["results_per_s"] / k * duration_s, f["rejected_fraction"] * f["requests"],
             f["service_cpu_us_per_request"] * f["requests"]) for f in loads]
    if len(rows) < 2 or not any(r[1] for r in rows):
        return None
    a = np.array([[r[0], r[1]] for r in rows])
    (result_us, rejected_us), *_ = np.linalg.lstsq(a, np.array([r[2] for r in rows]), rcond=None)
    return {"result": float(result_us), "rejected": float(rejected_us)}


def _measure_capacity(path: Path, images: np.ndarray, limit: float, k: float, clients: int) -> float:
    """Results per wall second under saturating load."""
    probe = PROBE_OVER_LIMIT * limit
    say("bench serve", "measuring the capacity (15 s of saturating load; results of the last 8 s)"
                       + (f"; the cluster dilated {k:g}x" if k != 1.0 else ""))
    say("bench serve", f"  offering {probe:.0f} requests/s: {PROBE_OVER_LIMIT:g}x the planner's limit at the "
                       "thresholds rate adaptation aims for")
    rows = _offer(path, images, probe / k, 15.0, clients)
    capacity_wall = max(1.0, sum(1 for o, _, done in rows if o == "result" and 7.0 <= done < 15.0) / 8.0)
    say("bench serve", f"capacity about {capacity_wall * k:.1f} results/s"
                       + (f" ({capacity_wall:.1f} in wall time)" if k != 1.0 else ""))
    return capacity_wall


def planned_limit(cluster_path: Path, pkg) -> float:
    """The planner's limit for the cluster, in items per second, at the thresholds `serve`'s rate adaptation aims
    for by default (the final exit's validation accuracy less a point)."""
    cluster = load_cluster(cluster_path)
    target = pkg.manifest["tasks"][-1].get("val_accuracy", 1.0) - 0.01
    limit_at = limit_at_thresholds(cluster, pkg, cluster.mode, planner_costs(pkg, cluster))
    return limit_at(pkg.profile.for_target(target).thresholds)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process so far (its threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_serve(cluster_path: Path, out: Path, duration_s: float = 20.0, loads: tuple[float, ...] = (0.5, 1, 2, 10),
                clients: int = 4, dilation: float = 1.0, capacity: float | None = None) -> dict:
    """`dilation` k: the cluster's clock runs k times slower (mdiexit.clock), so that the host (the clients, the
    service's own reading and answering) is not what limits it; every figure is read back in the cluster's own
    time. `duration_s` is wall time per load. `capacity`: the loads' unit, in results per second of the cluster's
    own time, instead of measuring it (e.g. the dilated run's, to offer an undilated run the same loads)."""
    pkg = load_package(load_cluster(cluster_path).package)
    images = load_test_split(pkg).images[:2000]
    k = dilation
    with tempfile.TemporaryDirectory(prefix="mdiexit-bench-serve-") as tmp:
        work = Path(tmp)
        path = _service_cluster(cluster_path, work)
        heartbeat_ms = load_cluster(path).heartbeat_ms
        log = (work / "serve.log").open("w")
        proc = subprocess.Popen([sys.executable, "-m", "mdiexit.cli", "serve", "--cluster", str(path), "--quiet",
                                 "--dilation", repr(k), "--out", str(work / "out")],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            if capacity is None:
                capacity_wall = _measure_capacity(path, images, planned_limit(cluster_path, pkg), k, clients)
            else:
                capacity_wall = capacity / k
                say("bench serve", f"capacity given: {capacity:g} results/s")
            figures = []
            for load in loads:
                rate = load * capacity_wall
                say("bench serve", f"{load:g}x capacity = {rate * k:.1f} requests/s for {duration_s:g} s")
                cpu0 = _cpu_s(proc.pid)
                rows = _offer(path, images, rate, duration_s, clients)
                f = _figures(rows, duration_s, load, rate, _cpu_s(proc.pid) - cpu0, k)
                figures.append(f)
                say("bench serve", f"  results {f['results_per_s']:.1f}/s, p50/p95 {f['p50_ms'] or 0:.0f}/"
                    f"{f['p95_ms'] or 0:.0f} ms, rejected {f['rejected_fraction']:.1%}, service CPU "
                    f"{f['service_cpu_us_per_request']:.0f} us a request")
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
        summary = json.loads((work / "out" / "summary.json").read_text())
    result = {"dilation": k, "capacity_per_s": capacity_wall * k, "loads": figures,
              "service_cpu_us_by_outcome": cpu_by_outcome(figures, duration_s, k), "service_summary": {
        key: summary[key] for key in ("offered", "rejected", "admitted", "completed", "expired", "failed", "lost")},
        "config": {"cluster": shown_path(cluster_path), "duration_s": duration_s, "clients": clients,
                   "admission": "rate (serve's default)", "wall_capacity_per_s": capacity_wall,
                   "heartbeat_ms": heartbeat_ms, "capacity": "given" if capacity is not None else "measured"}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    say("bench serve", f"wrote {out}; service lost {summary['lost']}")
    return result
