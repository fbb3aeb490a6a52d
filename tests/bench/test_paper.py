"""bench paper's rate search keeps every probe's run when asked (a collapse can then be read from its timeline)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from mdiexit.bench.paper import search_mode
from mdiexit.bench.ratesearch import Criterion
from mdiexit.config import write_cluster
from mdiexit.sim.run import simulate

PACKAGE = Path(__file__).resolve().parents[2] / "models" / "mobilenetv2-fmnist"


def test_keep_runs_writes_one_folder_per_probe(tmp_path):
    nodes = [{"name": n, "role": r, "port": 6100 + i, "slowdown": 40, "bandwidth_mbps": 50, "latency_ms": 2}
             for i, (n, r) in enumerate([("source", "source"), ("w1", "worker")])]
    cluster = write_cluster(tmp_path / "c.yaml", package=PACKAGE, mode="mdi", nodes=nodes)

    def run(path, opts):
        return simulate(path, replace(opts, limit_items=200), seed=0, times="macs")

    kept = tmp_path / "runs"
    row, log = search_mode(cluster, "mdi", "mdi (fixed)", Criterion(0.0), 20.0, probe_s=3.0, drain_s=5.0,
                           refine_steps=1, run=run, confirm=False, keep_runs=kept)
    folders = sorted(kept.iterdir())
    assert len(folders) == len(log["probes"]) >= 2
    assert all(f.name.startswith("exp1-mdi-fixed-") for f in folders)
    for f in folders:
        assert (f / "timeline.csv").is_file() and (f / "items.csv").is_file()
    rates = sorted(json.loads((f / "summary.json").read_text())["rate"] for f in folders)
    assert rates == sorted(p["rate"] for p in log["probes"])
