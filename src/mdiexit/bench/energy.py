"""`mdiexit bench energy`: joules per item of mdi, ddi-exit, mdi-exit and energy-aware mdi-exit (`objective:
energy`) on one cluster whose nodes have power models (edge4: its boards' presets), at the same rates and accuracy
target, each beside the planner's floor: the fewest joules per item the power models allow at that rate
(energyplan.plan_energy, at the profile's exit mix).

Runs are simulated (mdiexit.sim: the runtime's own cores and policies in virtual time, the devices emulated from
the device profile), so a sweep of rates takes a minute: the exit-mode thresholds are the cheapest that reach the
target accuracy (ExitProfile.for_target), admission is fixed. Three parts:
  - the same rate: shares of mdi's planned limit (there every mode keeps up), then of mdi-exit's (each mode whose
    planned limit reaches it);
  - each mode at `own_share` of its own planned limit;
  - capacity: each objective overloaded (fixed admission at `overload` x mdi-exit's limit), its sustained rate.
Outputs: OUT.json (and the figures on docs/bench/energy.md).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mdiexit import util
from mdiexit.config import load_cluster, write_cluster
from mdiexit.energyplan import plan_energy
from mdiexit.package import load_package
from mdiexit.planner import node_times, plan_throughput
from mdiexit.policies.modes import rules_for
from mdiexit.runtime.device import planner_costs
from mdiexit.runtime.options import RunOptions
from mdiexit.sim.run import simulate

ENERGY_AWARE = "mdi-exit/energy"  # mdi-exit under `objective: energy`
VARIANTS = {"mdi": ("mdi", "throughput"), "ddi-exit": ("ddi-exit", "throughput"),
            "mdi-exit": ("mdi-exit", "throughput"), ENERGY_AWARE: ("mdi-exit", "energy")}


@dataclass
class EnergyBenchOptions:
    shares_of_mdi: tuple[float, ...] = (0.9,)  # rates where every mode runs: shares of mdi's planned limit
    shares_of_mdi_exit: tuple[float, ...] = (0.5, 0.9)  # and where only the exit modes keep up
    own_share: float = 0.9  # each mode at this share of its own planned limit
    overload: float = 1.5  # capacity: fixed admission at this x mdi-exit's planned limit
    duration_s: float = 20.0  # virtual seconds of admission per run
    warmup_s: float = 4.0
    target_accuracy: float | None = None  # None: the final exit's validation accuracy - 0.01
    data_dir: Path | None = None


def say(msg: str) -> None:
    util.say("bench", msg, clock=True)


def bench_energy(cluster_path: Path, out: Path, o: EnergyBenchOptions) -> dict:
    cluster = load_cluster(cluster_path)
    pkg = load_package(cluster.package)
    if all(n.power is None for n in cluster.nodes):
        raise ValueError(f"{cluster_path}: no node has a power model; give each a `power:` preset or figures")
    target = o.target_accuracy
    if target is None:
        target = pkg.manifest["tasks"][-1].get("val_accuracy", 1.0) - 0.01
    thresholds = tuple(pkg.profile.for_target(target).thresholds)
    mix = pkg.profile.exit_mix(thresholds)
    times = node_times(cluster, planner_costs(pkg, cluster))
    limits = {name: plan_throughput(cluster, pkg, mode, mix, times).throughput_per_s
              for name, (mode, _) in VARIANTS.items()}
    say(f"target accuracy {target:.4f}: thresholds {list(thresholds)}; planned limits "
        + ", ".join(f"{k} {v:.0f}/s" for k, v in limits.items()))
    with tempfile.TemporaryDirectory(prefix="mdiexit-energy-") as d:
        files = {obj: write_cluster(Path(d) / f"{obj}.yaml", cluster, objective=obj)
                 for obj in ("throughput", "energy")}

        def run(name: str, rate: float) -> dict:
            mode, objective = VARIANTS[name]
            s = simulate(files[objective], RunOptions(
                mode=mode, rate=rate, duration_s=o.duration_s, warmup_s=o.warmup_s, live=False, admission="fixed",
                thresholds=thresholds if rules_for(mode).exits else None, data_dir=o.data_dir)).summary
            row = {"variant": name, "rate": rate, "throughput_per_s": s["throughput_per_s"],
                   "joules_per_item": s["joules_per_item"], "accuracy": s["accuracy"],
                   "p95_ms": s["latency_ms"]["p95"], "bytes_per_item": s["bytes_per_item"], "lost": s["lost"]}
            try:
                row["planned_floor_j"] = plan_energy(cluster, pkg, mode, mix, times, rate).joules_per_item
            except ValueError:  # past the planned limit: no floor at this rate
                row["planned_floor_j"] = None
            say(f"{name} at {rate:.0f}/s: {row['throughput_per_s']:.1f}/s, {row['joules_per_item']:.4f} J/item "
                f"(floor {_j(row['planned_floor_j'])}), accuracy {row['accuracy']:.4f}, p95 {row['p95_ms']:.0f} ms")
            return row

        rates = [round(f * limits["mdi"], 1) for f in o.shares_of_mdi] + \
                [round(f * limits["mdi-exit"], 1) for f in o.shares_of_mdi_exit]
        same_rate = [run(name, r) for r in rates for name in VARIANTS if r <= limits[name]]  # those that keep up
        own = [run(name, round(o.own_share * limits[name], 1)) for name in VARIANTS]
        over = round(o.overload * limits["mdi-exit"], 1)
        capacity = [run(name, over) for name in ("mdi-exit", ENERGY_AWARE)]
    result = {"cluster": str(cluster_path), "package": pkg.name, "target_accuracy": target,
              "thresholds": list(thresholds), "planned_limit_per_s": limits, "same_rate": same_rate,
              "own_capacity": own, "capacity": capacity, "options": vars(o) | {"data_dir": None},
              "goals": goals(same_rate, own, capacity)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    say(f"wrote {out}")
    return result


def goals(same_rate: list[dict], own: list[dict], capacity: list[dict]) -> dict:
    """The issue's two goals as measured: mdi-exit against mdi at the same rate (and each at its own capacity), and
    energy-aware against throughput-first mdi-exit at each rate, with the capacity that costs."""
    def at(rows: list[dict], name: str, rate: float | None = None) -> dict | None:
        return next((r for r in rows if r["variant"] == name and (rate is None or r["rate"] == rate)), None)

    def saving(a: dict | None, b: dict | None) -> float | None:
        return None if a is None or b is None else 1 - a["joules_per_item"] / b["joules_per_item"]

    rates = sorted({r["rate"] for r in same_rate})
    return {
        "mdi_exit_below_mdi_same_rate": {r: saving(at(same_rate, "mdi-exit", r), at(same_rate, "mdi", r))
                                         for r in rates if at(same_rate, "mdi", r)},
        "mdi_exit_below_mdi_own_capacity": saving(at(own, "mdi-exit"), at(own, "mdi")),
        "energy_aware_below_throughput_first": {r: saving(at(same_rate, ENERGY_AWARE, r), at(same_rate, "mdi-exit", r))
                                                for r in rates},
        "energy_aware_capacity_cost": 1 - at(capacity, ENERGY_AWARE)["throughput_per_s"]
        / at(capacity, "mdi-exit")["throughput_per_s"],
    }


def _j(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"
