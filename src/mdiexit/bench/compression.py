"""`mdiexit bench compression`: mdi-exit on the cluster with every link cut to --bandwidth Mbit/s, once per
way of sending features: learned 8-bit codes (compress: on / auto), lossless lz4 and zstd frames, and raw
float32. Each run uses rate adaptation at the same target accuracy, so throughput is the sustainable rate;
all runs are measured in one command, side by side."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from mdiexit.config import write_cluster
from mdiexit.runtime.launch import RunOptions, run_cluster

VARIANTS = {  # name -> (compress, wire_codec)
    "raw float32": ("off", "raw"),
    "lz4": ("off", "lz4"),
    "zstd": ("off", "zstd"),
    "learned codes (on)": ("on", "raw"),
    "learned codes (auto)": ("auto", "raw"),
}


def variant_cluster(cluster_path: Path, folder: Path, name: str, bandwidth_mbps: float) -> Path:
    compress, wire = VARIANTS[name]
    return write_cluster(folder / f"{name.split()[0]}-{compress}-{wire}.yaml", cluster_path,
                         every_node={"compress": compress, "wire_codec": wire, "bandwidth_mbps": bandwidth_mbps})


def bench_compression(cluster_path: Path, bandwidth_mbps: float = 10.0, duration_s: float = 30.0,
                      target_accuracy: float | None = None, out: Path | None = None) -> dict:
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        for name in VARIANTS:
            path = variant_cluster(cluster_path, Path(d), name, bandwidth_mbps)
            s = run_cluster(path, RunOptions(mode="mdi-exit", rate=50.0, duration_s=duration_s,
                                             warmup_s=duration_s / 2, live=False, admission="rate",
                                             target_accuracy=target_accuracy, drain_timeout_s=30)).summary
            rows[name] = {"throughput_per_s": s["throughput_per_s"], "bytes_per_item": s["bytes_per_item"],
                          "accuracy": s["accuracy"], "p95_ms": s["latency_ms"]["p95"], "lost": s["lost"],
                          "tasks_run": {n: v["tasks_run"] for n, v in s["per_node"].items()}}
            print(f"  {name:>22}: {s['throughput_per_s']:6.1f} items/s, {s['bytes_per_item']:7.0f} bytes/item, "
                  f"accuracy {s['accuracy']:.4f}, p95 {s['latency_ms']['p95']:.0f} ms", file=sys.stderr)
    base = rows["raw float32"]["throughput_per_s"]
    print(f"mdi-exit on {cluster_path} with every link at {bandwidth_mbps:g} Mbit/s, rate adaptation, "
          f"steady second half of {duration_s:g} s runs:")
    print(f"{'features sent as':>22} {'items/s':>8} {'vs raw':>7} {'bytes/item':>10} {'accuracy':>8} {'p95 ms':>7}")
    for name, r in rows.items():
        print(f"{name:>22} {r['throughput_per_s']:>8.1f} {r['throughput_per_s'] / base:>6.2f}x "
              f"{r['bytes_per_item']:>10.0f} {r['accuracy']:>8.4f} {r['p95_ms']:>7.0f}")
    result = {"cluster": str(cluster_path), "bandwidth_mbps": bandwidth_mbps, "duration_s": duration_s,
              "results": rows}
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
    return result
