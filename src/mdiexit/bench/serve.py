"""`mdiexit bench serve`: a service under load, as its clients see it (DESIGN §10).

A copy of the cluster file gets free ports, a client_port and fresh keys; `mdiexit serve` (rate adaptation)
runs on it as its own process. The capacity is measured first: 15 seconds of saturating load, the results
per second of the last eight. Then each load (a multiple of that capacity) is offered open-loop for
``duration_s`` from ``clients`` client processes, each with its own connection. Per load: client-side
throughput (results per second), p50/p95/p99 of the client-side latency of results, and the share of
requests rejected, expired or failed. Every request is answered; none may be lost.
"""

from __future__ import annotations

import json
import multiprocessing
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
from mdiexit.runtime.ports import free_ports
from mdiexit.security import create_client_key, create_keys
from mdiexit.util import say


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


def _figures(rows: list[tuple], duration_s: float, offered_rate: float) -> dict:
    lat = np.array([s for o, s, _ in rows if o == "result"]) * 1000
    n = max(1, len(rows))
    in_window = sum(1 for o, _, done in rows if o == "result" and done <= duration_s)  # not the backlog after it
    out = {"offered_per_s": offered_rate, "requests": len(rows),
           "throughput_per_s": in_window / duration_s,
           "latency_ms": {f"p{q}": float(np.percentile(lat, q)) if len(lat) else None for q in (50, 95, 99)}}
    for kind in ("rejected", "expired", "failed", "error", "timeout"):
        out[f"{kind}_fraction"] = sum(1 for o, *_ in rows if o == kind) / n
    return out


def bench_serve(cluster_path: Path, out: Path, duration_s: float = 20.0, loads: tuple[float, ...] = (0.5, 1, 2, 10),
                clients: int = 4) -> dict:
    pkg = load_package(load_cluster(cluster_path).package)
    images = load_test_split(pkg).images[:2000]
    with tempfile.TemporaryDirectory(prefix="mdiexit-bench-serve-") as tmp:
        work = Path(tmp)
        path = _service_cluster(cluster_path, work)
        log = (work / "serve.log").open("w")
        proc = subprocess.Popen([sys.executable, "-m", "mdiexit.cli", "serve", "--cluster", str(path), "--quiet",
                                 "--out", str(work / "out")], stdout=log, stderr=subprocess.STDOUT)
        try:
            say("bench serve", "measuring the capacity (15 s of saturating load; results of the last 8 s)")
            rows = _offer(path, images, 2000.0, 15.0, clients)
            capacity = max(1.0, sum(1 for o, _, done in rows if o == "result" and 7.0 <= done < 15.0) / 8.0)
            say("bench serve", f"capacity about {capacity:.1f} results/s")
            figures = {}
            for load in loads:
                rate = load * capacity
                say("bench serve", f"{load:g}x capacity = {rate:.1f} requests/s for {duration_s:g} s")
                figures[f"{load:g}x"] = f = _figures(_offer(path, images, rate, duration_s, clients), duration_s, rate)
                lat = f["latency_ms"]
                say("bench serve", f"  throughput {f['throughput_per_s']:.1f}/s, p50/p95/p99 {lat['p50']:.0f}/"
                    f"{lat['p95']:.0f}/{lat['p99']:.0f} ms, rejected {f['rejected_fraction']:.1%}")
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
        summary = json.loads((work / "out" / "summary.json").read_text())
    result = {"capacity_per_s": capacity, "loads": figures, "service_summary": {
        k: summary[k] for k in ("offered", "rejected", "admitted", "completed", "expired", "failed", "lost")},
        "config": {"cluster": str(cluster_path), "duration_s": duration_s, "clients": clients,
                   "admission": "rate (serve's default)"}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    say("bench serve", f"wrote {out}; service lost {summary['lost']}")
    return result
