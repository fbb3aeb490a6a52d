"""`mdiexit bench simulator`: how far the simulator (mdiexit.sim) is from the runtime, and how it scales.

Validation - on edge4, camera4 and a partial mesh whose nodes hold only some tasks, modes mdi, ddi-exit and
  mdi-exit (fixed thresholds): the rate search's sustained throughput (bench.ratesearch, the same criterion
  and probes for both drivers), and the p95 latency of a run at 0.8x the runtime's sustained rate (the same
  offered load for both). Reported as simulator / runtime ratios. The runtime runs time-dilated (`dilation`,
  mdiexit.clock), so that what the test host adds to each message counts less.
Scale - generated Wi-Fi meshes of 10, 100 and 1,000 devices, every mode: the throughput at the target accuracy
  (a simulated rate search at fixed thresholds; mdi-exit with its own rate adaptation, over the second half of
  the run) and the simulator's wall time.
Outputs in OUT: simulator.json and results.md.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mdiexit import util
from mdiexit.bench.paper import search_mode, summary_row, test_accuracies
from mdiexit.bench.ratesearch import Criterion
from mdiexit.config import load_cluster, write_cluster
from mdiexit.policies.modes import MODES
from mdiexit.runtime.launch import run_cluster
from mdiexit.runtime.options import RunOptions
from mdiexit.runtime.ports import local_nodes, on_free_ports
from mdiexit.runtime.report import RunResult
from mdiexit.sim.run import simulate
from mdiexit.topology import generate

VALIDATION_CLUSTERS = {"edge4": Path("examples/edge4.yaml"), "camera4": Path("examples/camera4.yaml")}
PARTIAL = "partial"  # the partial mesh, written by `partial_mesh`
VALIDATION_MODES = ("mdi", "ddi-exit", "mdi-exit")
LOAD_FACTOR = 0.8  # the p95 is compared at this share of the runtime's sustained rate
START_RATE = 20.0  # every rate search starts here


@dataclass
class SimBenchOptions:
    probe_s: float = 12.0  # seconds of admission per rate-search probe (the first third is warm-up)
    adaptive_s: float = 10.0  # virtual seconds of each scale run with rate adaptation
    refine_steps: int = 2
    # the runtime side's clock runs this many times slower (mdiexit.clock): at 1, a 2-core host
    # running five node processes added 10-20 ms to every p95 that no device would (docs/bench/simulator.md, "Where the
    # undilated runtime's extra time went"); at 2 it is half as busy and its own time counts half
    dilation: float = 2.0
    sizes: tuple[int, ...] = (10, 100, 1000)
    modes: tuple[str, ...] | None = None  # None: VALIDATION_MODES there, every mode at scale
    clusters: tuple[str, ...] | None = None  # validation clusters (None: edge4, camera4, partial)
    validate: bool = True
    drain_s: float = 5.0
    data_dir: Path | None = None
    seed: int = 0


def say(msg: str) -> None:
    util.say("bench", msg, clock=True)


def partial_mesh(out: Path, package: Path) -> Path:
    """Five nodes, not fully linked, most holding only some tasks: the source the first two, jetson-a tasks 1-3,
    rpi-a the last two, jetson-b everything, rpi-b 3-4 reachable only through jetson-b."""
    nodes = local_nodes([{"name": "source", "slowdown": 40, "tasks": [1, 2], "bandwidth_mbps": 20, "latency_ms": 5},
                         {"name": "jetson-a", "slowdown": 20, "tasks": [1, 2, 3], "bandwidth_mbps": 50,
                          "latency_ms": 2},
                         {"name": "jetson-b", "slowdown": 20, "bandwidth_mbps": 40, "latency_ms": 3},
                         {"name": "rpi-a", "slowdown": 40, "tasks": [3, 4], "bandwidth_mbps": 30, "latency_ms": 4},
                         {"name": "rpi-b", "slowdown": 80, "tasks": [3, 4], "bandwidth_mbps": 20, "latency_ms": 5}],
                        compress="auto")
    neighbours = {"source": ["jetson-a", "jetson-b"], "jetson-a": ["source", "jetson-b", "rpi-a"],
                  "jetson-b": ["source", "jetson-a", "rpi-a", "rpi-b"], "rpi-a": ["jetson-a", "jetson-b"],
                  "rpi-b": ["jetson-b"]}
    return write_cluster(out, package=package, mode="mdi-exit", nodes=nodes, neighbours=neighbours,
                         heartbeat_ms=50, max_batch=8)


def validation(clusters: dict[str, Path], modes: tuple[str, ...], accuracies: tuple[float, float], target: float,
               o: SimBenchOptions) -> list[dict]:
    rows = []

    def runtime(path: Path, opts: RunOptions) -> RunResult:
        return run_cluster(path, dataclasses.replace(opts, dilation=o.dilation))

    for cname, path in clusters.items():
        for mode in modes:
            crit = Criterion(target, expected_accuracy=accuracies[1] if MODES[mode].exits else accuracies[0])
            label = f"{cname} {mode}"
            found = {}
            for driver, run in (("runtime", runtime), ("simulator", simulate)):
                t0 = time.perf_counter()
                row, log = search_mode(path, mode, f"{label} ({driver})", crit, START_RATE, o.probe_s, o.drain_s,
                                       o.data_dir, refine_steps=o.refine_steps, run=run,
                                       confirm=driver == "runtime")
                found[driver] = {**row, "search": log, "wall_s": time.perf_counter() - t0}
            rate = LOAD_FACTOR * (found["runtime"]["rate"] or START_RATE)
            for driver, run in (("runtime", runtime), ("simulator", simulate)):
                s = run(path, RunOptions(mode=mode, rate=rate, duration_s=o.probe_s, warmup_s=o.probe_s / 3,
                                         live=False, data_dir=o.data_dir, drain_timeout_s=o.drain_s)).summary
                found[driver]["at_load"] = {"rate": rate, **summary_row(s)}
            rt, sim = found["runtime"], found["simulator"]
            rows.append({"cluster": cname, "mode": mode, "runtime": rt, "simulator": sim,
                         "throughput_ratio": _ratio(sim["throughput_per_s"], rt["throughput_per_s"]),
                         "p95_ratio": _ratio(sim["at_load"]["p95_ms"], rt["at_load"]["p95_ms"])})
            say(f"{label}: sustained runtime {rt['throughput_per_s']:.1f}/s, simulator {sim['throughput_per_s']:.1f}/s"
                f"; p95 at {rate:.1f}/s runtime {rt['at_load']['p95_ms']:.0f} ms, simulator "
                f"{sim['at_load']['p95_ms']:.0f} ms")
    return rows


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def scale(package: Path, folder: Path, modes: tuple[str, ...], accuracies: tuple[float, float], target: float,
          o: SimBenchOptions) -> list[dict]:
    rows = []
    for n in o.sizes:
        nodes, neighbours = generate("mesh", n, seed=o.seed)
        path = write_cluster(folder / f"mesh{n}.yaml", package=package, mode="mdi-exit", nodes=nodes,
                             neighbours=neighbours)
        for mode in modes:
            t0 = time.perf_counter()
            if mode == "mdi-exit":
                half = o.adaptive_s / 2
                s = simulate(path, RunOptions(mode=mode, rate=START_RATE, duration_s=o.adaptive_s, warmup_s=half,
                                              live=False, admission="rate", target_accuracy=target,
                                              data_dir=o.data_dir)).summary
                row = {"rate": None, **summary_row(s), "sim_wall_s": s["simulated"]["wall_s"], "how": "rate adaptation"}
            else:
                crit = Criterion(target, expected_accuracy=accuracies[1] if MODES[mode].exits else accuracies[0])
                row, log = search_mode(path, mode, f"mesh{n} {mode}", crit, START_RATE, o.probe_s, o.drain_s,
                                       o.data_dir, refine_steps=o.refine_steps, run=simulate, confirm=False)
                row = {**row, "how": "rate search", "probes": len(log["probes"]),
                       "sim_wall_s": (time.perf_counter() - t0) / max(1, len(log["probes"]))}
            row.update(nodes=n, mode=mode, wall_s=time.perf_counter() - t0)
            rows.append(row)
            say(f"mesh{n} {mode}: {row['throughput_per_s']:.1f} items/s ({row['how']}), simulator "
                f"{row['sim_wall_s']:.1f} s per run, {row['wall_s']:.0f} s in all")
    return rows


def bench_simulator(out: Path, o: SimBenchOptions) -> dict:
    t0 = time.time()
    edge4 = load_cluster(VALIDATION_CLUSTERS["edge4"])
    final_acc, default_acc = test_accuracies(edge4.package, o.data_dir)
    target = final_acc - 0.01
    say(f"final-exit test accuracy {final_acc:.4f}; target accuracy A = {target:.4f}")
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"target_accuracy": target, "dilation": o.dilation}
    with tempfile.TemporaryDirectory() as d:
        if o.validate:
            clusters = {**{k: on_free_ports(v, Path(d) / f"{k}.yaml") for k, v in VALIDATION_CLUSTERS.items()},
                        PARTIAL: partial_mesh(Path(d) / "partial.yaml", edge4.package)}
            clusters = {k: v for k, v in clusters.items() if o.clusters is None or k in o.clusters}
            modes = tuple(m for m in VALIDATION_MODES if o.modes is None or m in o.modes)
            result["validation"] = validation(clusters, modes, (final_acc, default_acc), target, o)
        modes = tuple(m for m in MODES if o.modes is None or m in o.modes)
        result["scale"] = scale(edge4.package, Path(d), modes, (final_acc, default_acc), target, o)
    result["config"] = {"options": {k: str(v) for k, v in o.__dict__.items()}, "wall_s": time.time() - t0}
    (out / "simulator.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "results.md").write_text(markdown(result))
    if result["scale"]:
        plot_scale(result["scale"], out / "scale.png")
    say(f"done in {(time.time() - t0) / 60:.1f} min: {out / 'simulator.json'}")
    print(markdown(result))
    return result


def plot_scale(rows: list[dict], path: Path) -> None:
    """Throughput at the target accuracy against cluster size per mode, and mdi-exit's advantage over mdi and
    ddi-exit (the ratio of their throughputs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["nodes"] for r in rows})
    by = {(r["nodes"], r["mode"]): r["throughput_per_s"] for r in rows}
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for mode in dict.fromkeys(r["mode"] for r in rows):
        ax.plot(sizes, [by.get((n, mode)) for n in sizes], marker="o", label=mode)
    ax.set(xscale="log", yscale="log", xlabel="devices (generated Wi-Fi mesh)", ylabel="items/s at the target accuracy",
           title="Throughput against cluster size (simulated)")
    ax.legend(fontsize=8)
    for base in ("mdi", "ddi-exit"):
        ratios = [by[(n, "mdi-exit")] / by[(n, base)] if by.get((n, base)) and by.get((n, "mdi-exit")) else None
                  for n in sizes]
        ax2.plot(sizes, ratios, marker="o", label=f"mdi-exit / {base}")
    ax2.axhline(1.0, color="grey", lw=0.8)
    ax2.set(xscale="log", xlabel="devices", ylabel="throughput ratio", title="mdi-exit's advantage")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _f(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def markdown(r: dict) -> str:
    lines = []
    if r.get("validation"):
        lines += [f"**Simulator vs runtime** - sustained throughput (rate search, accuracy >= "
                  f"{r['target_accuracy']:.4f}) and p95 latency at {LOAD_FACTOR:g}x the runtime's sustained rate; "
                  f"the runtime time-dilated {r.get('dilation', 1):g}x", "",
                  "| cluster | mode | runtime items/s | simulator items/s | ratio | runtime p95 ms | simulator p95 ms "
                  "| ratio |", "|---|---|---|---|---|---|---|---|"]
        for v in r["validation"]:
            rt, sim = v["runtime"], v["simulator"]
            lines.append(f"| {v['cluster']} | {v['mode']} | {_f(rt['throughput_per_s'])} | "
                         f"{_f(sim['throughput_per_s'])} | {_f(v['throughput_ratio'], '.2f')} | "
                         f"{_f(rt['at_load']['p95_ms'], '.0f')} | {_f(sim['at_load']['p95_ms'], '.0f')} | "
                         f"{_f(v['p95_ratio'], '.2f')} |")
        lines.append("")
    if r.get("scale"):
        lines += ["**Simulator at scale** - generated Wi-Fi meshes, throughput at the target accuracy", "",
                  "| devices | mode | items/s | how | accuracy | p95 ms | wall s per simulated run |",
                  "|---|---|---|---|---|---|---|"]
        for s in r["scale"]:
            lines.append(f"| {s['nodes']} | {s['mode']} | {_f(s['throughput_per_s'])} | {s['how']} | "
                         f"{_f(s.get('accuracy'), '.4f')} | {_f(s.get('p95_ms'), '.0f')} | {_f(s['sim_wall_s'])} |")
    return "\n".join(lines) + "\n"
