"""The planner (DESIGN §4): a cluster's physical limit, the most items per second its nodes' compute and egress can
carry at a given exit mix, as a linear program over where each task runs and how items move. Pure: it imports
no runtime and no torch; scipy's HiGHS solves it.

    plan = plan_throughput(cluster, pkg, "mdi-exit", pkg.profile.exit_mix(pkg.default_thresholds),
                           node_times(cluster, costs_from_macs(pkg)))
    plan.throughput_per_s, plan.bottleneck

The linear program, for a model of K tasks, with r_k the fraction of items that run task k (r_1 = 1):

    variables   λ                 items/s admitted at the source
                x[n,k]            items/s of task k that node n runs (n holds k, and the mode lets it run there)
                f[a,b,j,c]        items/s sent a -> b along a neighbour edge carrying task j's output (j = 0: the
                                  raw input), as floats (c = raw) or as the learned code (c = code); b holds task j+1
    maximise    λ
    conserve    for every node n and task j: the items at n needing task j, λ·[n is the source, j = 1]
                + (r_j / r_{j-1})·x[n,j-1] + Σ_a f[a,n,j-1,·] = x[n,j] + Σ_b f[n,b,j-1,·]
    compute     Σ_k x[n,k]·t_n(k) + Σ coded sends·enc_n + Σ coded receipts·dec_n <= 1 s per s, for every node n
                (one compute thread per node: `threads` are a task's intra-op threads, already in its time t_n)
    egress      Σ_{b,j,c} f[n,b,j,c]·bytes(j,c) <= bandwidth_n (bytes/s), for every node n with a limit

The mode (policies/modes.py) removes variables: `local` runs everything on the source; `mdi` and `mdi-static` make
the source run task 1 when it holds it (no raw input leaves it); the DDI modes send raw items from the source to a
neighbour only, which runs all their tasks (no feature flows); a source that does not compute runs nothing; the
modes without exits have r_k = 1. A node that holds the next task may pass an item on to another holder, as the
offloading rule may (hop limits are not modelled). A node's `compress` decides which forms its sends may take:
off (floats), on (codes where the package has an encoder), auto (either: the limit picks). RESULTs, STATE
heartbeats, headers and lossless wire codecs are not counted. Conservation implies Σ_n x[n,k] = r_k·λ.

A second solve, at the optimal λ, picks the placement that sends the fewest bytes, so that the reported flows and
utilisations do not wander through equivalent routes. The bottleneck is the constraints with a positive shadow
price in the first solve: the saturated nodes' compute and egress that bound λ.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from mdiexit.policies.modes import rules_for
from mdiexit.protocol.stats import SINGLE, per_task_s, tasks_run

if TYPE_CHECKING:  # the cluster file and package readers load only when a plan is made, not when a CLI is parsed
    from mdiexit.config import ClusterConfig, NodeConfig
    from mdiexit.package import Package

_PRICE_TOL = 1e-9  # shadow prices below this (items/s per unit) are zero
_OPTIMUM_SLACK = 1e-9  # the tidying solve keeps λ within this relative distance of the optimum
_SHOWN = 1e-6  # placements and flows below this share of the throughput are solver noise, not reported


@dataclass(frozen=True)
class NodeTimes:
    """Seconds one item takes on one node (slowdown included): per task, and per task boundary for its code."""

    task_s: Mapping[int, float]
    encode_s: Mapping[int, float] = field(default_factory=dict)
    decode_s: Mapping[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Costs:
    """Seconds per item of each piece of compute on a device of slowdown 1 (or rated at BASE_RATED_GMACS when
    ``rated``): the host's profiled times, or MACs / rated speed before any measurement (DESIGN §2)."""

    task_s: tuple[float, ...]  # task k at index k-1
    encode_s: Mapping[int, float] = field(default_factory=dict)  # task boundary -> seconds
    decode_s: Mapping[int, float] = field(default_factory=dict)
    rated: bool = False  # True: scale by each node's rated speed; False: by its slowdown, as the emulation does

    def for_node(self, node: NodeConfig) -> NodeTimes:
        from mdiexit.config import BASE_RATED_GMACS

        f = BASE_RATED_GMACS * 1e9 / node.rated_macs_per_s if self.rated else node.slowdown
        return NodeTimes({k: f * s for k, s in enumerate(self.task_s, start=1)},
                         {j: f * s for j, s in self.encode_s.items()}, {j: f * s for j, s in self.decode_s.items()})


def costs_from_macs(pkg: Package) -> Costs:
    """Costs from the manifest's MACs at BASE_RATED_GMACS (codecs: their recorded encoder/decoder MACs)."""
    from mdiexit.config import BASE_RATED_GMACS

    rate = BASE_RATED_GMACS * 1e9
    extra = {c.get("after_task"): c for c in pkg.manifest.get("compression") or []}
    return Costs(tuple(t.macs / rate for t in pkg.tasks),
                 {c.after_task: extra.get(c.after_task, {}).get("encoder_macs", 0) / rate for c in pkg.compression},
                 {c.after_task: extra.get(c.after_task, {}).get("decoder_macs", 0) / rate for c in pkg.compression},
                 rated=True)


def node_times(cluster: ClusterConfig, costs: Costs | Mapping[int, Costs]) -> dict[str, NodeTimes]:
    """Every node's times: ``costs`` for all, or per engine thread count (each node profiled at its ``threads``)."""
    pick = (lambda n: costs) if isinstance(costs, Costs) else (lambda n: costs[n.threads])
    return {n.name: pick(n).for_node(n) for n in cluster.nodes}


def reach_of(exit_fraction: Sequence[float]) -> tuple[float, ...]:
    """P(an item runs task k) from the fractions finishing at each exit."""
    mix = np.asarray(exit_fraction, float)
    if mix.ndim != 1 or not len(mix) or (mix < -1e-9).any() or abs(mix.sum() - 1.0) > 1e-6:
        raise ValueError(f"exit fractions: expected non-negative numbers summing to 1, got {list(exit_fraction)}")
    return tuple(float(x) for x in np.clip(np.cumsum(mix[::-1])[::-1] / mix.sum(), 0.0, 1.0))


@dataclass(frozen=True)
class Flow:
    """One way an item may move: a -> b carrying task ``boundary``'s output (0: the raw input) in ``nbytes``."""

    src: str
    dst: str
    boundary: int
    nbytes: int
    coded: bool = False
    send_s: float = 0.0  # encoding on src
    recv_s: float = 0.0  # decoding on dst


@dataclass(frozen=True)
class Problem:
    """The linear program's data: who may run what at what cost, how items may move, and the resources."""

    entry: Mapping[str, float]  # source -> its share of the items (its weight's; one source: all)
    reach: tuple[float, ...]
    runs: Mapping[tuple[str, int], float]  # (node, task) -> seconds per item
    flows: tuple[Flow, ...]
    capacity_s: Mapping[str, float]  # node -> seconds of compute per second
    egress_bytes_s: Mapping[str, float | None]  # node -> bytes/s (None: unlimited)


@dataclass(frozen=True)
class Binding:
    """A constraint that bounds the throughput: a node's compute or egress."""

    kind: str  # "compute" | "egress"
    node: str
    utilization: float
    gain_per_percent: float  # items/s gained per +1 % of this resource (its shadow price)


@dataclass
class Plan:
    throughput_per_s: float
    mode: str
    exit_fraction: tuple[float, ...]
    reach: tuple[float, ...]
    nodes: dict[str, dict]  # name -> compute/egress utilisation, tasks/s, bytes/s
    links: dict[tuple[str, str], dict]  # (a, b) -> bytes/s, items/s, share of a's egress
    bottleneck: list[Binding]
    thresholds: tuple[float, ...] | None = None
    joules_per_item: float | None = None  # an energy plan's (mdiexit.energyplan) at throughput_per_s, the rate asked
    uncounted: tuple[str, ...] = ()  # an energy plan's nodes without a power model: their work costs it nothing
    sources: dict[str, float] = dataclasses.field(default_factory=dict)  # each source's items/s, at its weight's share

    def to_json(self) -> dict:
        return {"throughput_per_s": self.throughput_per_s, "mode": self.mode, "joules_per_item": self.joules_per_item,
                "uncounted": list(self.uncounted),
                "thresholds": list(self.thresholds) if self.thresholds is not None else None, "sources": self.sources,
                "exit_fraction": list(self.exit_fraction), "reach": list(self.reach), "nodes": self.nodes,
                "links": [{"from": a, "to": b, **v} for (a, b), v in self.links.items()],
                "bottleneck": [dataclasses.asdict(b) for b in self.bottleneck]}


def build_problem(cluster: ClusterConfig, mode: str, reach: Sequence[float], times: Mapping[str, NodeTimes],
                  raw_bytes: int, feature_bytes: Sequence[int], code_bytes: Mapping[int, int]) -> Problem:
    """The program for ``cluster`` in ``mode``: ``feature_bytes[j-1]`` are task j's output bytes as floats,
    ``code_bytes[j]`` as the learned code (where the package has one)."""
    rules = rules_for(mode)
    k_tasks = len(reach)
    weights = cluster.weights
    sources = set(weights)
    runs: dict[tuple[str, int], float] = {}
    for n in cluster.nodes:
        if (n.role == "source" and not rules.source_computes) or (rules.single_node and n.name not in sources):
            continue
        for k in sorted(n.held_tasks(k_tasks)):
            t = times[n.name].task_s.get(k)
            if t is None or not t > 0:
                raise ValueError(f"node {n.name}: no positive time for task {k} (got {t!r})")
            runs[n.name, k] = t
    flows: list[Flow] = []
    for a, nbs in ([] if rules.single_node else cluster.neighbours.items()):
        for b in nbs:
            for j in range(k_tasks):
                if (b, j + 1) not in runs or not _may_send(rules, a, sources, j, runs):
                    continue
                flows.extend(_forms(cluster.node(a), a, b, j, raw_bytes if j == 0 else feature_bytes[j - 1],
                                    code_bytes.get(j), times))
    total = sum(weights.values())
    return Problem({s: w / total for s, w in weights.items()}, tuple(float(r) for r in reach), runs, tuple(flows),
                   {n.name: 1.0 for n in cluster.nodes},
                   {n.name: None if n.bandwidth_mbps is None else n.bandwidth_mbps * 1e6 / 8 for n in cluster.nodes})


def _may_send(rules, a: str, sources: set[str], boundary: int, runs: Mapping[tuple[str, int], float]) -> bool:
    """Whether the mode lets node ``a`` send an item needing task ``boundary + 1``."""
    if not rules.offload_later:  # DDI: only the sources' raw items move, and the receiver runs all their tasks
        return boundary == 0 and a in sources
    if boundary == 0 and rules.source_runs_first and a in sources and (a, 1) in runs:
        return False  # classic MDI: a source runs task 1 itself, so raw inputs never leave it
    return True


def _forms(node: NodeConfig, a: str, b: str, j: int, nbytes: int, code: int | None,
           times: Mapping[str, NodeTimes]) -> list[Flow]:
    coded = code is not None and node.compress != "off"
    out = [] if coded and node.compress == "on" else [Flow(a, b, j, nbytes)]
    if coded:
        out.append(Flow(a, b, j, code, True, times[a].encode_s.get(j, 0.0), times[b].decode_s.get(j, 0.0)))
    return out


@dataclass(frozen=True)
class Program:
    """The linear program's matrices: variable 0 is λ, then one per (node, task) run, then one per flow."""

    a_eq: object  # scipy sparse: conservation, one row per (node, task) state, = 0
    a_ub: object  # compute (<= each node's capacity) and egress (scaled to <= 1) rows
    b_ub: np.ndarray
    rows: list[tuple[str, str]]  # (kind, node) of each a_ub row
    runs: list[tuple[str, int]]  # (node, task) of variable 1 + i
    flow0: int  # the first flow variable

    @property
    def n_var(self) -> int:
        return self.a_ub.shape[1]


def program(p: Problem) -> Program:
    """The matrices of ``p`` (see the module's docstring)."""
    from scipy.sparse import coo_matrix

    runs = list(p.runs)
    run_var = {rk: 1 + i for i, rk in enumerate(runs)}
    n_var = 1 + len(runs) + len(p.flows)
    flow0 = 1 + len(runs)
    # conservation rows: one per (node, task) state
    states: dict[tuple[str, int], int] = {}
    eq: list[tuple[int, int, float]] = []

    def add_eq(state: tuple[str, int], var: int, coef: float) -> None:
        eq.append((states.setdefault(state, len(states)), var, coef))

    for source, share in p.entry.items():  # each source admits its share of λ
        add_eq((source, 1), 0, share)
    for (n, k), var in run_var.items():
        add_eq((n, k), var, -1.0)
        if k < len(p.reach):
            ratio = p.reach[k] / p.reach[k - 1] if p.reach[k - 1] > 0 else 0.0
            add_eq((n, k + 1), var, ratio)
    for i, fl in enumerate(p.flows):
        add_eq((fl.src, fl.boundary + 1), flow0 + i, -1.0)
        add_eq((fl.dst, fl.boundary + 1), flow0 + i, 1.0)
    # resource rows: compute (b = capacity) and egress (scaled to b = 1)
    names = list(p.capacity_s)
    ub: list[tuple[int, int, float]] = []
    rows: list[tuple[str, str]] = [("compute", n) for n in names]
    row_of = {n: i for i, n in enumerate(names)}
    for (n, k), var in run_var.items():
        ub.append((row_of[n], var, p.runs[n, k]))
    for i, fl in enumerate(p.flows):
        if fl.send_s:
            ub.append((row_of[fl.src], flow0 + i, fl.send_s))
        if fl.recv_s:
            ub.append((row_of[fl.dst], flow0 + i, fl.recv_s))
    egress_row = {}
    for n in names:
        if p.egress_bytes_s.get(n) is not None:
            egress_row[n] = len(rows)
            rows.append(("egress", n))
    for i, fl in enumerate(p.flows):
        if fl.src in egress_row:
            ub.append((egress_row[fl.src], flow0 + i, fl.nbytes / p.egress_bytes_s[fl.src]))
    b_ub = np.array([p.capacity_s[n] for n in names] + [1.0] * len(egress_row))

    def matrix(entries, n_rows):
        r, c, v = zip(*entries, strict=True) if entries else ((), (), ())
        return coo_matrix((v, (r, c)), shape=(n_rows, n_var)).tocsr()

    return Program(matrix(eq, len(states)), matrix(ub, len(rows)), b_ub, rows, runs, flow0)


def solve(problem: Problem, tidy: bool = True) -> tuple[float, np.ndarray, list[Binding], dict]:
    """Maximise λ. Returns (λ, the solution vector, the binding constraints, the index of its variables)."""
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix, vstack

    p, m = problem, program(problem)
    n_var, b_ub = m.n_var, m.b_ub
    zeros = np.zeros(m.a_eq.shape[0])
    c = np.zeros(n_var)
    c[0] = -1.0
    res = linprog(c, A_ub=m.a_ub, b_ub=b_ub, A_eq=m.a_eq, b_eq=zeros, bounds=(0, None), method="highs")
    if res.status == 3:
        raise ValueError("the throughput is unbounded: some path costs no compute and no bandwidth")
    if res.status != 0:
        raise RuntimeError(f"linear program failed: {res.message}")
    lam = float(res.x[0])
    usage = m.a_ub @ res.x
    binding = [Binding(kind, n, float(usage[i] / b_ub[i]), float(-res.ineqlin.marginals[i] * 0.01 * b_ub[i]))
               for i, (kind, n) in enumerate(m.rows) if -res.ineqlin.marginals[i] > _PRICE_TOL]
    x = res.x
    if tidy and lam > 0:
        cost = np.zeros(n_var)
        scale = max((fl.nbytes for fl in p.flows), default=1)
        for i, fl in enumerate(p.flows):
            cost[m.flow0 + i] = fl.nbytes / scale + 1e-6  # + a little per hop: no pointless relays
        floor = coo_matrix(([-1.0], ([0], [0])), shape=(1, n_var))
        tidy_res = linprog(cost, A_ub=vstack([m.a_ub, floor]).tocsr(),
                           b_ub=np.append(b_ub, -lam * (1 - _OPTIMUM_SLACK)), A_eq=m.a_eq, b_eq=zeros,
                           bounds=(0, None), method="highs")
        if tidy_res.status == 0:
            x = tidy_res.x
    return lam, x, sorted(binding, key=lambda b: -b.gain_per_percent), {"runs": m.runs, "flow0": m.flow0}


def plan_problem(problem: Problem, mode: str, exit_fraction: Sequence[float], tidy: bool = True) -> Plan:
    """Solve ``problem`` and report the placement, the utilisations and the bottleneck."""
    lam, x, binding, index = solve(problem, tidy)
    return report(problem, lam, x, binding, index, mode, exit_fraction)


def report(problem: Problem, lam: float, x: np.ndarray, binding: list[Binding], index: dict, mode: str,
           exit_fraction: Sequence[float]) -> Plan:
    """The placement, utilisations and bottleneck of the solution ``x`` (λ = ``lam``)."""
    tiny = _SHOWN * max(lam, 1.0)
    nodes: dict[str, dict] = {}
    for n in problem.capacity_s:
        limited = problem.egress_bytes_s[n] is not None
        nodes[n] = {"compute_utilization": 0.0, "egress_utilization": 0.0 if limited else None, "tasks_per_s": {},
                    "bytes_per_s": 0.0}
    for i, (n, k) in enumerate(index["runs"]):
        v = float(x[1 + i])
        if v > tiny:
            nodes[n]["tasks_per_s"][k] = v
            nodes[n]["compute_utilization"] += v * problem.runs[n, k] / problem.capacity_s[n]
    links: dict[tuple[str, str], dict] = {}
    for i, fl in enumerate(problem.flows):
        v = float(x[index["flow0"] + i])
        if v <= tiny:
            continue
        link = links.setdefault((fl.src, fl.dst), {"bytes_per_s": 0.0, "items_per_s": {}, "coded_items_per_s": 0.0})
        link["bytes_per_s"] += v * fl.nbytes
        link["items_per_s"][fl.boundary] = link["items_per_s"].get(fl.boundary, 0.0) + v
        link["coded_items_per_s"] += v if fl.coded else 0.0
        nodes[fl.src]["bytes_per_s"] += v * fl.nbytes
        nodes[fl.src]["compute_utilization"] += v * fl.send_s / problem.capacity_s[fl.src]
        nodes[fl.dst]["compute_utilization"] += v * fl.recv_s / problem.capacity_s[fl.dst]
    for (a, _), link in links.items():
        bw = problem.egress_bytes_s[a]
        link["egress_share"] = None if bw is None else link["bytes_per_s"] / bw
    for n, d in nodes.items():
        if problem.egress_bytes_s[n] is not None:
            d["egress_utilization"] = d["bytes_per_s"] / problem.egress_bytes_s[n]
    return Plan(lam, mode, tuple(float(f) for f in exit_fraction), problem.reach, nodes, links, binding,
                sources={s: lam * share for s, share in problem.entry.items()})


def plan_throughput(cluster: ClusterConfig, pkg: Package, mode: str, exit_fraction: Sequence[float],
                    times: Mapping[str, NodeTimes], thresholds: Sequence[float] | None = None,
                    tidy: bool = True) -> Plan:
    """The physical limit of ``cluster`` in ``mode`` at this exit mix (one fraction per exit). Raises ConfigError
    when the mode cannot reach a task from the source along the neighbour graph."""
    exit_fraction = exit_mix_for(pkg, mode, exit_fraction)
    plan = plan_problem(package_problem(cluster, pkg, mode, exit_fraction, times), mode, exit_fraction, tidy)
    plan.thresholds = tuple(thresholds) if thresholds is not None else None
    return plan


def exit_mix_for(pkg: Package, mode: str, exit_fraction: Sequence[float]) -> Sequence[float]:
    """The exit mix a mode runs at: ``exit_fraction``, checked, or every item at the last exit without exits."""
    if not rules_for(mode).exits:
        return [0.0] * (pkg.num_tasks - 1) + [1.0]
    if len(exit_fraction) != pkg.num_tasks:
        raise ValueError(f"exit fractions: expected {pkg.num_tasks}, one per exit, got {len(exit_fraction)}")
    return exit_fraction


def package_problem(cluster: ClusterConfig, pkg: Package, mode: str, exit_fraction: Sequence[float],
                    times: Mapping[str, NodeTimes]) -> Problem:
    """The program for ``pkg`` on ``cluster`` in ``mode``, checked that the mode reaches every task."""
    rules = rules_for(mode)
    cluster.check_tasks(pkg.num_tasks)
    if not rules.single_node:
        cluster.check_reachable(pkg.num_tasks, rules.source_computes, rules.offload_later)
    return build_problem(cluster, mode, reach_of(exit_fraction), times, int(np.prod(pkg.input_shape)),
                         [t.feature_bytes for t in pkg.tasks[:-1]],
                         {c.after_task: c.code_bytes for c in pkg.compression})


def limit_at_thresholds(cluster: ClusterConfig, pkg: Package, mode: str, costs: Costs | Mapping[int, Costs]
                        ) -> Callable[[Sequence[float]], float | None]:
    """The limit at the exit mix each threshold vector gives on the package's validation split, with these costs:
    the feasibility bound of threshold adaptation (policies.admission.feasible_ceiling). None: no plan (no scipy,
    or a held task without a time)."""
    times = node_times(cluster, costs)

    def limit(thresholds: Sequence[float]) -> float | None:
        try:
            return plan_throughput(cluster, pkg, mode, pkg.profile.exit_mix(list(thresholds)), times,
                                   tidy=False).throughput_per_s
        except (ValueError, ImportError):
            return None

    return limit


def limit_from_stats(cluster: ClusterConfig, pkg: Package, mode: str, final_stats: Mapping[str, Mapping[str, float]],
                     exit_fraction: Sequence[float], prefix: str = SINGLE) -> float | None:
    """The limit of a finished run from its nodes' calibrated per-task times (``prefix``: see protocol/stats.py,
    as the runtime's compute-only ideal reads them; codecs count as free) at its measured exit mix. None where a
    node that computes was not calibrated, the nodes differ from the cluster file's, or no item finished."""
    if set(final_stats) != {n.name for n in cluster.nodes} or abs(sum(exit_fraction) - 1.0) > 1e-6:
        return None
    times = {}
    for name, st in final_stats.items():
        times[name] = NodeTimes(per_task_s(st, prefix))
        if not times[name].task_s and tasks_run(st):
            return None  # computes, but uncalibrated (a real device)
    try:
        return plan_throughput(cluster, pkg, mode, exit_fraction, times, tidy=False).throughput_per_s
    except ValueError:  # a held task without a time
        return None
    except ImportError:  # no scipy: a source installed with only the worker's dependencies
        return None
