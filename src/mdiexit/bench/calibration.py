"""`mdiexit bench calibration`: how much the emulated devices move between runs. The cluster is started RUNS times,
each time as its own `mdiexit run` command (a fresh process, as a user starts it), for a short run; every node's
calibrated times (summary.json per_node.task_ms) and the planner's ideal are compared across the runs. Both ways of
calibrating, run in turn: ``host`` (the launcher profiles the host once, before any node starts) and ``self`` (each
node profiles itself at start-up, beside the others starting: `run --self-profile`)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

WAYS = {"host": [], "self": ["--self-profile"]}


def one_run(cluster: Path, extra: list[str], folder: Path) -> dict:
    cmd = [sys.executable, "-m", "mdiexit.cli", "run", "--cluster", str(cluster), "--rate", "20", "--duration",
           "1.5", "--warmup", "0.5", "--quiet", "--out", str(folder), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads((folder / "summary.json").read_text())


def spread(values: list[float]) -> float:
    return max(values) / min(values) - 1.0


def bench_calibration(cluster: Path, runs: int, out: Path) -> dict:
    times: dict[str, list[dict]] = {w: [] for w in WAYS}
    ideals: dict[str, list[float]] = {w: [] for w in WAYS}
    with tempfile.TemporaryDirectory() as d:
        for i in range(runs):
            for way, extra in WAYS.items():  # in turn, so that a drift of the host does not favour one
                s = one_run(cluster, extra, Path(d) / f"{way}{i}")
                times[way].append({n: v["task_ms"] for n, v in s["per_node"].items()})
                ideals[way].append(s["ideal_throughput_per_s"])
                print(f"  run {i + 1}/{runs} {way:>4}: ideal {s['ideal_throughput_per_s']:.1f} items/s",
                      file=sys.stderr)
    report: dict = {"cluster": str(cluster), "runs": runs, "ways": {}}
    for way in WAYS:
        rows = []
        for node, tasks in times[way][0].items():
            for task, batches in tasks.items():
                for batch in batches:
                    vals = [r[node][task][batch] for r in times[way] if batch in r.get(node, {}).get(task, {})]
                    rows.append({"node": node, "task": task, "batch": batch, "min_ms": min(vals),
                                 "max_ms": max(vals), "spread": spread(vals)})
        worst = sorted(rows, key=lambda r: -r["spread"])
        report["ways"][way] = {"ideal_per_s": ideals[way], "ideal_spread": spread(ideals[way]),
                               "median_time_spread": sorted(r["spread"] for r in rows)[len(rows) // 2],
                               "worst": worst[:5], "all": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    for way, r in report["ways"].items():
        w = r["worst"][0]
        print(f"{way:>4}: ideal {min(r['ideal_per_s']):.1f}..{max(r['ideal_per_s']):.1f} items/s "
              f"(spread {r['ideal_spread']:.1%}); a node's time per task and batch moved by "
              f"{r['median_time_spread']:.1%} (median) and at most {w['spread']:.0%} ({w['node']} task {w['task']} "
              f"batch {w['batch']}: {w['min_ms']:.2f}..{w['max_ms']:.2f} ms)")
    return report
