"""One simulated run (`mdiexit simulate`): the run `mdiexit run` would make of a cluster file, in virtual time. It
takes the same RunOptions and returns the same RunResult (summary, ledger, timeline), so write_results, the
benches and the plots work on both."""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path

from mdiexit.energy import cluster_models, run_energy
from mdiexit.planner import costs_from_macs, limit_from_stats
from mdiexit.runtime.device import planner_costs
from mdiexit.runtime.metrics import summarize
from mdiexit.runtime.options import ClusterError, RunOptions
from mdiexit.runtime.report import RunResult
from mdiexit.runtime.runpolicy import capacity_hint, make_admission, make_gate, planned_limits, preflight
from mdiexit.runtime.sourcecore import Admission, SourceCore
from mdiexit.runtime.summary import run_config, run_summary
from mdiexit.sim.model import host_times, load_items_logits
from mdiexit.sim.world import World

log = logging.getLogger("mdiexit.sim")
READY_HEARTBEATS = 2  # admission starts once every node has reported this many times (runtime: wait_ready)
DRAIN_STEP_S = 0.05  # the drain checks for the last outcomes this often (virtual time)


def simulate(cluster_path: Path, opts: RunOptions, seed: int = 0, times: str = "profile",
             admission: Admission | None = None) -> RunResult:
    """Simulate ``cluster_path`` under ``opts`` (the options of `mdiexit run`; the ones about processes, keys and
    the live view do not apply). ``times``: profile (ONNX Runtime on this host, x slowdown) or macs."""
    wall0 = time.perf_counter()
    if str(opts.items).startswith("video:"):
        raise ClusterError("--items video: plays a video in `mdiexit run` only; the simulator streams the test "
                           "split or an image folder (--items test|all|N)")
    run = preflight(cluster_path, opts)
    cluster, mode, rules, pkg = run.cluster, run.mode, run.rules, run.pkg
    items = load_items_logits(pkg, opts.items, opts.data_dir, opts.limit_items)
    # the planner's costs: the same device times as the simulation's
    costs = (lambda: costs_from_macs(pkg)) if times == "macs" else partial(planner_costs, pkg, cluster)
    limit_at = planned_limits(cluster, pkg, mode, costs)
    if admission is None:
        admission = make_admission(pkg, mode, opts, limit_at)
    gate = make_gate(opts)
    deadline_s = None if opts.deadline_ms is None else opts.deadline_ms / 1000
    sc = SourceCore(cluster.source.name, rules, pkg.num_tasks, admission, gate,
                    len(cluster.nodes) * cluster.max_batch, cluster.dead_after_ms / 1000)
    sc.capacity_hint = capacity_hint(opts, admission, limit_at)
    profiles = {n: host_times(pkg, cluster, n, times) for n in sorted({n.threads for n in cluster.nodes})}
    world = World(cluster, pkg, rules, sc, items, profiles, seed, deadline_s)
    env, src = world.env, world.source
    setup_s = time.perf_counter() - wall0

    start = READY_HEARTBEATS * world.heartbeat_s
    env.run(until=start)
    sc.run_start = src.start = start
    src.admitting = True
    for fn in (src.arrive, src.tick, src.control):
        world.at(0.0, fn)
    end = start + opts.duration_s
    env.run(until=end)
    src.admitting = False
    drain_until = end + opts.drain_timeout_s
    while env.now < drain_until and (sc.ledger.settled < sc.ledger.admitted or gate.queue):
        env.run(until=min(env.now + DRAIN_STEP_S, drain_until))
    for _ in gate.take_all():
        gate.rejected["stopping"] += 1
    for item_id in sc.ledger.in_flight_ids():
        sc.ledger.fail(item_id, f"no result within the {opts.drain_timeout_s:g} s drain")

    final_stats = {name: node.stats(env.now) for name, node in world.nodes.items()}
    summary = summarize(sc.ledger, pkg.num_tasks, (start + opts.warmup_s, end), final_stats, sc.backlog_samples,
                        deadline_s, gate, (), partial(limit_from_stats, cluster, pkg, mode))
    summary.update(node_failures=sc.failure_summary(), recovery_s=None, secure=False, emulation_warnings=[],
                   **run_energy(cluster_models(cluster.nodes), final_stats, summary["completed"], pkg.num_tasks))
    wall_s = time.perf_counter() - wall0
    config = run_config(cluster_path, cluster, opts, mode, admission, "simulated", "simulated")
    summary = run_summary(mode, summary, opts, config, crashed=[], simulated={
        "wall_s": wall_s, "setup_s": setup_s, "events": world.events, "virtual_s": env.now, "seed": seed,
        "times": times})
    log.info("simulated %.1f s in %.1f s of wall time (%d events)", env.now, wall_s, world.events)
    return RunResult(summary, sc.ledger, sc.timeline, items.paths)
