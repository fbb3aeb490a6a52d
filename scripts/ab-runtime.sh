#!/usr/bin/env bash
# The node runtime at BASE (a commit) against this checkout, side by side: RUNS interleaved pairs of 16-s runs of
# mdi-exit on edge4 (pinned devices) offered RATE items/s, above what the cluster can take, so each run shows its
# saturated throughput (below it, RATE shows the runtime's CPU at that load). Prints one line per run and the medians
# of throughput and of the runtime's own CPU per item-hop; the runs are kept in runs/ab-runtime/. CLUSTER: another
# cluster file (e.g. one with `emulation: zero-cost`, the runtime alone; both commits must accept it).
# usage (from the repository root, after scripts/setup.sh):  scripts/ab-runtime.sh BASE [RUNS] [RATE] [CLUSTER]
set -euo pipefail
base=${1:?usage: scripts/ab-runtime.sh BASE [RUNS] [RATE] [CLUSTER]}
runs=${2:-3}
rate=${3:-2000}
cluster=${4:-examples/edge4.yaml}
tmp=$(mktemp -d)
git worktree add -q --detach "$tmp/base" "$base"
trap 'git worktree remove --force "$tmp/base"; rm -rf "$tmp"' EXIT
out=runs/ab-runtime
mkdir -p "$out"
for i in $(seq "$runs"); do
  for v in base new; do
    src=$([ "$v" = base ] && echo "$tmp/base/src" || echo "$PWD/src")
    PYTHONPATH=$src timeout 200 .venv/bin/python -m mdiexit.cli run --cluster "$cluster" \
      --device-profile docs/results/device-profile.json --mode mdi-exit --rate "$rate" --duration 16 --warmup 6 \
      --thresholds 0.75,0.5,0.5,0 --quiet --out "$out/$v-$i" > "$out/$v-$i.log" 2>&1
  done
done
.venv/bin/python - "$out" "$runs" <<'PY'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
med, cpu = {}, {}
for v in ("base", "new"):
    got, us = [], []
    for i in range(1, runs + 1):
        s = json.load(open(f"{out}/{v}-{i}/summary.json"))
        got.append(s["throughput_per_s"])
        us.append(s["runtime_cpu_us_per_item_hop"])
        ideal = s.get("efficiency_batched")  # none under a zero-cost model: no device time, no ideal
        print(f"{v} run {i}: {s['throughput_per_s']:.1f} items/s, "
              + (f"{ideal:.0%} of the batched ideal, " if ideal is not None else "")
              + f"host CPU {s['host_cpu_utilization']:.0%}, p95 {s['latency_ms']['p95']:.0f} ms, "
              f"runtime {us[-1]:.0f} µs per item-hop")
    med[v], cpu[v] = statistics.median(got), statistics.median(us)
print(f"medians: base {med['base']:.1f}, new {med['new']:.1f} items/s, ratio {med['new'] / med['base']:.3f}; "
      f"runtime CPU base {cpu['base']:.0f}, new {cpu['new']:.0f} µs per item-hop, ratio {cpu['new'] / cpu['base']:.3f}")
PY
