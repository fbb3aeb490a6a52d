"""What a run is, from its cluster file and options, for `run`, `serve` and the simulator alike: the checks before
anything starts (preflight), and the admission policy and gate the source core gets (DESIGN §3.3, §10), so that
both executors prepare a run one way."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mdiexit.config import ClusterConfig, load_cluster
from mdiexit.package import Package, load_package
from mdiexit.planner import Costs, limit_at_thresholds
from mdiexit.policies.admission import (
    DEADLINE_SHARE_OF_BACKLOG,
    FEASIBLE_UTILISATION,
    RateAdaptation,
    ThresholdAdaptation,
    cheapest_alike,
    feasible_ceiling,
)
from mdiexit.policies.gate import AdmissionGate
from mdiexit.policies.modes import ModeRules, no_exit_thresholds, rules_for
from mdiexit.runtime.options import ClusterError, RunOptions
from mdiexit.runtime.sourcecore import Admission, FixedAdmission

log = logging.getLogger("mdiexit.launch")


@dataclass
class Preflight:
    """A run that passed its checks: its cluster, mode, the mode's rules and the package."""

    cluster: ClusterConfig
    mode: str
    rules: ModeRules
    pkg: Package


def preflight(cluster_path: Path, opts: RunOptions, check_onnx: bool = False) -> Preflight:
    """Load the cluster file and its package and refuse, naming the fix, what no run of them can do: a task no
    node holds, a task no path reaches, thresholds that do not match the package's exits."""
    cluster = load_cluster(cluster_path)
    mode = opts.mode or cluster.mode
    rules = rules_for(mode)
    pkg = load_package(cluster.package, check_onnx=check_onnx)
    cluster.check_tasks(pkg.num_tasks)
    if not rules.single_node:
        cluster.check_reachable(pkg.num_tasks, rules.source_computes, rules.offload_later)
    if opts.thresholds is not None and len(opts.thresholds) != pkg.num_tasks:
        raise ClusterError(f"--thresholds: {len(opts.thresholds)} values for the package's {pkg.num_tasks} exits; "
                           f"give {pkg.num_tasks}, the last 0")
    return Preflight(cluster, mode, rules, pkg)


def make_admission(pkg: Package, mode: str, opts: RunOptions,
                   limit_at: Callable[[tuple[float, ...]], float | None] | None = None) -> Admission:
    """The source's admission policy for this run (DESIGN §3.3). ``limit_at``: the cluster's physical limit at a
    threshold vector (planner.limit_at_thresholds), which bounds threshold adaptation to what the rate allows."""
    if opts.admission == "fixed" or not rules_for(mode).exits:
        if opts.admission != "fixed":
            log.warning("mode %s has no exits: admission %s falls back to a fixed rate", mode, opts.admission)
        thresholds = (opts.thresholds or pkg.default_thresholds) if rules_for(mode).exits else \
            no_exit_thresholds(pkg.num_tasks)
        return FixedAdmission(opts.rate, tuple(thresholds))
    w_star = opts.target_backlog_ms / 1000
    if opts.deadline_ms is not None:  # the backlog aimed for must leave most of the deadline to the rest of the way
        w_star = min(w_star, opts.deadline_ms / 1000 * DEADLINE_SHARE_OF_BACKLOG)
    if opts.admission == "rate":
        target = opts.target_accuracy
        if target is None:
            target = pkg.manifest["tasks"][-1].get("val_accuracy", 1.0) - 0.01
        initial = opts.rate
        planned = None
        if limit_at is not None and opts.serve is not None:  # a cold service: what the cluster can carry
            planned = limit_at(pkg.profile.for_target(target).thresholds)
        if planned:  # until it measures its own
            initial = max(initial, min(planned * FEASIBLE_UTILISATION, RateAdaptation.max_rate))
        return RateAdaptation(pkg.profile, target, target_backlog_s=w_star, initial_rate=initial)
    if opts.admission == "thresholds":
        top = len(pkg.profile.frontier) - 1 if limit_at is None else feasible_ceiling(pkg.profile, opts.rate, limit_at)
        return ThresholdAdaptation(pkg.profile, opts.rate, target_backlog_s=w_star,
                                   max_index=cheapest_alike(pkg.profile, top))
    raise ValueError(f"unknown admission {opts.admission!r}; choose fixed, rate or thresholds")


def capacity_hint(opts: RunOptions, admission: Admission,
                  limit_at: Callable[[tuple[float, ...]], float | None] | None) -> float:
    """Items per second a service may count on draining before it has measured its own: the planner's limit at
    its thresholds, less a margin (FEASIBLE_UTILISATION). It sizes the in-flight window while the measured
    throughput is lower (a service that has only seen bursts), so that a burst the cluster can drain is queued,
    not refused. 0 for a stream (`run` offers at the admission rate, the window follows what it measured)."""
    if opts.serve is None or limit_at is None:
        return 0.0
    return (limit_at(admission.thresholds()[0]) or 0.0) * FEASIBLE_UTILISATION


def planned_limits(cluster: ClusterConfig, pkg: Package, mode: str,
                   costs: Callable[[], Costs | dict[int, Costs]]) -> Callable[[tuple[float, ...]], float | None]:
    """The planner's limit at each threshold vector, at the devices' ``costs()``: threshold adaptation's bound, and
    a cold service's first rate. The costs are taken (the host profiled) only when a policy first asks."""
    limits = functools.cache(lambda: limit_at_thresholds(cluster, pkg, mode, costs()))
    return lambda thresholds: limits()(thresholds)


def make_gate(opts: RunOptions) -> AdmissionGate:
    return AdmissionGate(max_backlog_s=opts.max_backlog_ms / 1000, max_wait_s=opts.max_wait_ms / 1000)
