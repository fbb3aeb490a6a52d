"""Energy per item: each node's power model, and the joules a run spent, in total, per node and per exit.

A node draws `idle_w` while it runs, `busy_w` while it computes, and `j_per_mb` for each megabyte it sends:

    joules = idle_w * elapsed_s + (busy_w - idle_w) * busy_s + j_per_mb * MB sent

`busy_s` is the emulated device's compute time (what its slowdown says a real device would take), so an emulated
site is charged what the boards it emulates would draw. The figures come from the cluster file (`power:` on a
node: a preset name or the three numbers), and the presets below name real boards. A node with no power model
is not counted (and says so). A node that reads its own meter (mdiexit.meters: a Jetson's INA3221 rails) reports
the joules it measured instead. Pure: the runtime and the simulator both call `run_energy` on their final stats.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mdiexit.protocol.stats import SINGLE, per_task_s, tasks_run

# Each preset: (idle_w, busy_w, j_per_mb) and where the figures come from (docs/guide/energy.md cites them).
PRESETS: dict[str, tuple[tuple[float, float, float], str]] = {
    "raspberry-pi-4": ((2.7, 6.4, 0.3), "RasPi.TV measurements of the Pi 4 B: 540 mA idle, 1280 mA under stress "
                                        "--cpu 4, at 5 V"),
    "raspberry-pi-5": ((3.0, 8.0, 0.3), "idle about 3 W measured by u-labs.de; the busy figure is an estimate "
                                        "(the Pi 4's rise scaled to the Pi 5's faster cores): meter it"),
    "jetson-nano": ((1.9, 5.0, 0.3), "NVIDIA's 5 W power mode (nvpmodel -m 1) as the busy draw; idle from a "
                                     "module budget of about 1.9 W"),
    "jetson-orin-nano": ((3.0, 7.0, 0.3), "NVIDIA's 7 W power mode as the busy draw; idle about 3 W"),
}
# j_per_mb: a Wi-Fi radio of about 0.7 W active at about 20 Mbit/s (2.5 MB/s): 0.3 J/MB, shared by the presets.


class PowerError(ValueError):
    """A power model that cannot be used. The message names the field and the fix."""


@dataclass(frozen=True)
class PowerModel:
    idle_w: float
    busy_w: float
    j_per_mb: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.idle_w <= self.busy_w or self.j_per_mb < 0:
            raise PowerError(f"power: need 0 <= idle_w <= busy_w and j_per_mb >= 0, got idle_w {self.idle_w}, "
                             f"busy_w {self.busy_w}, j_per_mb {self.j_per_mb}")

    def joules(self, elapsed_s: float, busy_s: float, bytes_sent: float) -> float:
        return self.idle_w * elapsed_s + (self.busy_w - self.idle_w) * busy_s + self.j_per_mb * bytes_sent / 1e6


def power_model(spec: str | Mapping | None) -> PowerModel | None:
    """A node's `power:` entry: a preset name, a mapping of idle_w / busy_w / j_per_mb, or None (not counted)."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise PowerError(f"power: {spec!r} is not a preset; use one of {', '.join(PRESETS)}, or give "
                             "{idle_w: W, busy_w: W, j_per_mb: J}")
        return PowerModel(*PRESETS[spec][0])
    unknown = set(spec) - {"idle_w", "busy_w", "j_per_mb"}
    if unknown or not {"idle_w", "busy_w"} <= set(spec):
        raise PowerError(f"power: expected idle_w, busy_w and optionally j_per_mb, got {sorted(spec)}")
    return PowerModel(float(spec["idle_w"]), float(spec["busy_w"]), float(spec.get("j_per_mb", 0.0)))


def cluster_models(nodes) -> dict[str, PowerModel | None]:
    """Each node's power model, from its cluster-file entry (NodeConfig.power)."""
    return {n.name: power_model(n.power) for n in nodes}


def node_joules(model: PowerModel | None, stats: Mapping[str, float]) -> float | None:
    """A node's joules so far from its stats (elapsed_s, busy_s, bytes_sent): what its meter measured
    (``measured_j``), else its power model's figure, else None (not counted)."""
    if "measured_j" in stats:
        return stats["measured_j"]
    if model is None:
        return None
    return model.joules(stats.get("elapsed_s", 0.0), stats.get("busy_s", 0.0), stats.get("bytes_sent", 0.0))


def run_energy(models: Mapping[str, PowerModel | None], final_stats: Mapping[str, Mapping[str, float]],
               completed: int, num_exits: int) -> dict:
    """The summary's energy fields: joules in all and per node, per completed item, and per exit.

    Per exit k: what an item leaving there costs, were the run made only of such items: the idle and network energy
    per item (shared by all), plus the busy energy of tasks 1..k at the run's mean busy watts, each task at its mean
    device seconds per item over the nodes that ran it."""
    measured = {n: s["measured_j"] for n, s in final_stats.items() if "measured_j" in s}
    modelled = {n: s for n, s in final_stats.items() if models.get(n) is not None and n not in measured}
    per_node = {n: node_joules(models[n], s) for n, s in modelled.items()} | measured
    total = sum(per_node.values())
    out = {"joules": total if per_node else None,
           "joules_per_item": total / completed if per_node and completed else None,
           "energy_per_node_j": per_node, "energy_measured_nodes": sorted(measured),
           "energy_uncounted_nodes": sorted(n for n in final_stats if n not in per_node)}
    # the per-exit split needs the models' busy watts: over the modelled nodes
    busy_j = sum((models[n].busy_w - models[n].idle_w) * s.get("busy_s", 0.0) for n, s in modelled.items())
    busy_s = sum(s.get("busy_s", 0.0) for s in modelled.values())
    task_s = _mean_task_s(modelled)
    if modelled and completed and busy_s > 0 and task_s:
        shared, watts = (total - busy_j) / completed, busy_j / busy_s
        out["joules_per_exit"] = [shared + watts * sum(task_s.get(t, 0.0) for t in range(1, k + 1))
                                  for k in range(1, num_exits + 1)]
    return out


def _mean_task_s(final_stats: Mapping[str, Mapping[str, float]]) -> dict[int, float]:
    """Each task's device seconds per item (one at a time), averaged over the nodes by the tasks they ran."""
    runs: dict[int, list[tuple[float, int]]] = {}
    for s in final_stats.values():
        done = tasks_run(s)
        for task, seconds in per_task_s(s, SINGLE).items():
            runs.setdefault(task, []).append((seconds, done.get(task, 0)))
    return {t: sum(sec * n for sec, n in rows) / max(1, sum(n for _, n in rows)) if any(n for _, n in rows)
            else rows[0][0] for t, rows in runs.items()}
