"""The planner's energy objective (DESIGN §4, docs/guide/energy.md): the placement that carries a given rate for the
fewest joules per item, by the nodes' power models. The same linear program as the limit (mdiexit.planner), with λ
fixed at the rate and, as the cost, each node's watts above idle times its compute plus its joules per byte sent.
Pure: scipy's HiGHS solves it.

    plan = plan_energy(cluster, pkg, "mdi-exit", mix, node_times(cluster, costs), rate=180)
    plan.joules_per_item, plan.nodes, plan.uncounted
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mdiexit.planner import NodeTimes, Plan, Problem, exit_mix_for, package_problem, program, report, solve

if TYPE_CHECKING:
    from mdiexit.config import ClusterConfig
    from mdiexit.package import Package


@dataclass(frozen=True)
class EnergyRates:
    """What a node's work costs above its idle draw: watts while it computes, joules per byte it sends."""

    extra_w: float
    j_per_byte: float


def solve_energy(problem: Problem, rate: float, watts: Mapping[str, EnergyRates]) -> tuple[float, np.ndarray, dict]:
    """Carry exactly ``rate`` items/s for the fewest watts above idle. Returns (those watts, the solution vector,
    the index of its variables). A node missing from ``watts`` costs nothing. Raises ValueError past the limit."""
    from scipy.optimize import linprog

    p, m = problem, program(problem)
    cost = np.zeros(m.n_var)
    zero = EnergyRates(0.0, 0.0)
    for i, (n, k) in enumerate(m.runs):
        cost[1 + i] = watts.get(n, zero).extra_w * p.runs[n, k]
    for i, fl in enumerate(p.flows):
        src, dst = watts.get(fl.src, zero), watts.get(fl.dst, zero)
        cost[m.flow0 + i] = (src.j_per_byte * fl.nbytes + src.extra_w * fl.send_s + dst.extra_w * fl.recv_s
                             + 1e-12 * (fl.nbytes + 1))  # ties: fewer bytes, fewer hops
    bounds = [(rate, rate)] + [(0, None)] * (m.n_var - 1)
    res = linprog(cost, A_ub=m.a_ub, b_ub=m.b_ub, A_eq=m.a_eq, b_eq=np.zeros(m.a_eq.shape[0]), bounds=bounds,
                  method="highs")
    if res.status == 2:
        limit = solve(problem, tidy=False)[0]
        raise ValueError(f"{rate:g} items/s is past this cluster's limit of {limit:.1f}/s in this mode: "
                         "plan for a lower --rate")
    if res.status != 0:
        raise RuntimeError(f"linear program failed: {res.message}")
    return float(res.fun), res.x, {"runs": m.runs, "flow0": m.flow0}


def plan_energy(cluster: ClusterConfig, pkg: Package, mode: str, exit_fraction: Sequence[float],
                times: Mapping[str, NodeTimes], rate: float, thresholds: Sequence[float] | None = None) -> Plan:
    """The placement that carries ``rate`` items/s for the fewest joules, by each node's power model (the
    cluster file's ``power:``; a node without one is not counted). Its ``joules_per_item``: the counted nodes'
    idle draw plus the work's, per item. Raises ValueError past the cluster's limit."""
    from mdiexit.energy import cluster_models

    if not rate > 0:
        raise ValueError(f"rate: expected items/s > 0, got {rate:g}")
    exit_fraction = exit_mix_for(pkg, mode, exit_fraction)
    problem = package_problem(cluster, pkg, mode, exit_fraction, times)
    models = {n: m for n, m in cluster_models(cluster.nodes).items() if m is not None}
    watts = {n: EnergyRates(m.busy_w - m.idle_w, m.j_per_mb / 1e6) for n, m in models.items()}
    extra_w, x, index = solve_energy(problem, rate, watts)
    plan = report(problem, rate, x, [], index, mode, exit_fraction)
    plan.thresholds = tuple(thresholds) if thresholds is not None else None
    plan.joules_per_item = (sum(m.idle_w for m in models.values()) + extra_w) / rate if models else None
    plan.uncounted = tuple(n.name for n in cluster.nodes if n.name not in models)
    return plan
