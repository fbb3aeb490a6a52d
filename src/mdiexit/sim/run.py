"""One simulated run (`mdiexit simulate`): the run `mdiexit run` would make of a cluster file, in virtual time. It
takes the same RunOptions and returns the same RunResult (summary, ledger, timeline), so write_results, the
benches and the plots work on both."""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path

from mdiexit.config import VIDEO_PREFIX
from mdiexit.energy import cluster_models, run_energy
from mdiexit.planner import costs_from_macs, limit_from_stats
from mdiexit.policies.gate import AdmissionGate
from mdiexit.runtime.device import planner_costs
from mdiexit.runtime.ledger import Ledger
from mdiexit.runtime.metrics import fairness, source_part, summarize
from mdiexit.runtime.options import ClusterError, RunOptions, source_options
from mdiexit.runtime.report import RunResult
from mdiexit.runtime.runpolicy import capacity_hint, make_admission, make_gate, planned_limits, preflight
from mdiexit.runtime.sourcecore import Admission, SourceCore
from mdiexit.runtime.summary import run_config, run_summary
from mdiexit.sim.model import host_times, load_items_logits
from mdiexit.sim.rollout import RolloutRequest, SimDeploy
from mdiexit.sim.world import SimFeed, World

log = logging.getLogger("mdiexit.sim")
READY_HEARTBEATS = 2  # admission starts once every node has reported this many times (runtime: wait_ready)
DRAIN_STEP_S = 0.05  # the drain checks for the last outcomes this often (virtual time)


def simulate(cluster_path: Path, opts: RunOptions, seed: int = 0, times: str = "profile",
             admission: Admission | None = None, rollout: RolloutRequest | None = None) -> RunResult:
    """Simulate ``cluster_path`` under ``opts`` (the options of `mdiexit run`; the ones about processes, keys and
    the live view do not apply). ``times``: profile (ONNX Runtime on this host, x slowdown) or macs. Every source
    of the file streams as it would in `mdiexit run` (its own stream, floor, deadline and share of --rate).
    ``rollout``: play `mdiexit rollout` of a package at its ``at_s`` (sim.rollout)."""
    wall0 = time.perf_counter()
    run = preflight(cluster_path, opts)
    cluster, mode, rules, pkg = run.cluster, run.mode, run.rules, run.pkg
    if cluster.emulation == "zero-cost":
        raise ClusterError(f"{cluster_path}: emulation zero-cost measures the runtime alone, in `mdiexit run` or "
                           "`mdiexit bench overhead`; the simulator has no runtime: set emulation calibrated")
    total_weight = sum(cluster.weights.values())
    per_source = {n.name: source_options(opts, n, n.name == cluster.source.name, total_weight)
                  for n in cluster.sources}
    for name, o in per_source.items():
        if str(o.items).startswith(VIDEO_PREFIX):
            raise ClusterError(f"{name}: a video stream plays in `mdiexit run` only; the simulator streams the test "
                               "split or an image folder (--items test|all|N, or the source's stream)")
    # the planner's costs: the same device times as the simulation's
    costs = (lambda: costs_from_macs(pkg)) if times == "macs" else partial(planner_costs, pkg, cluster)
    limit_at = planned_limits(cluster, pkg, mode, costs)
    feeds: dict[str, SimFeed] = {}
    for name, o in per_source.items():
        policy = admission if admission is not None and name == cluster.source.name else \
            make_admission(pkg, mode, o, limit_at)
        sc = SourceCore(name, rules, pkg.num_tasks, policy, make_gate(opts), len(cluster.nodes) * cluster.max_batch,
                        cluster.dead_after_ms / 1000, pkg.version)
        sc.capacity_hint = capacity_hint(o, policy, limit_at)
        feeds[name] = SimFeed(sc, load_items_logits(pkg, o.items, o.data_dir, o.limit_items),
                              None if o.deadline_ms is None else o.deadline_ms / 1000)
    profiles = {n: host_times(pkg, cluster, n, times) for n in sorted({n.threads for n in cluster.nodes})}
    world = World(cluster, pkg, rules, feeds, profiles, seed)
    env = world.env
    first_source = world.sources[cluster.source.name]
    if rollout is not None:
        if len(cluster.sources) > 1:
            raise ClusterError("--rollout: a site of several sources cannot roll a version out yet")
        o = per_source[cluster.source.name]
        first_source.deploy = SimDeploy.prepare(world, first_source, rollout, pkg, o.items, o.data_dir,
                                                o.limit_items)
        world.rolling = True
    setup_s = time.perf_counter() - wall0

    start = READY_HEARTBEATS * world.heartbeat_s
    env.run(until=start)
    for src in world.sources.values():
        src.sc.run_start = src.start = start
        src.admitting = True
        for fn in (src.arrive, src.tick, src.control):
            world.at(0.0, fn)
    if rollout is not None:
        world.at(rollout.at_s, first_source.deploy.begin)
    end = start + opts.duration_s
    env.run(until=end)
    for src in world.sources.values():
        src.admitting = False
    drain_until = end + opts.drain_timeout_s
    scs = [f.sc for f in feeds.values()]
    while env.now < drain_until and any(sc.ledger.settled < sc.ledger.admitted or sc.gate.queue for sc in scs):
        env.run(until=min(env.now + DRAIN_STEP_S, drain_until))
    for sc in scs:
        for _ in sc.gate.take_all():
            sc.gate.rejected["stopping"] += 1
        for item_id in sc.ledger.in_flight_ids():
            sc.ledger.fail(item_id, f"no result within the {opts.drain_timeout_s:g} s drain")

    final_stats = {name: node.stats(env.now) for name, node in world.nodes.items()}
    window = (start + opts.warmup_s, end)
    first = feeds[cluster.source.name].sc
    ledger = Ledger.combined({n: f.sc.ledger for n, f in feeds.items()})  # the site's counts over every source
    gate = AdmissionGate.combined([f.sc.gate for f in feeds.values()])
    deadline_s = feeds[cluster.source.name].deadline_s
    summary = summarize(ledger, pkg.num_tasks, window, final_stats, first.backlog_samples, deadline_s, gate, (),
                        partial(limit_from_stats, cluster, pkg, mode))
    summary["sources"] = {
        n.name: source_part(n.weight, str(per_source[n.name].items), feeds[n.name].sc.ledger, feeds[n.name].sc.gate,
                            window, pkg.num_tasks, True, 0, per_source[n.name].target_accuracy,
                            adapted=per_source[n.name].adapts_endless())
        for n in cluster.sources}
    summary["fairness_jain"] = fairness(summary["sources"])
    if first.rollouts:
        summary["rollouts"] = [r.record(start) for r in first.rollouts]
    summary.update(node_failures=first.failure_summary(), recovery_s=None, secure=False, emulation_warnings=[],
                   **run_energy(cluster_models(cluster.nodes), final_stats, summary["completed"], pkg.num_tasks))
    wall_s = time.perf_counter() - wall0
    config = run_config(cluster_path, cluster, per_source[cluster.source.name], mode, first.admission, "simulated",
                        "simulated")
    summary = run_summary(mode, summary, opts, config, crashed=[], simulated={
        "wall_s": wall_s, "setup_s": setup_s, "events": world.events, "virtual_s": env.now, "seed": seed,
        "times": times})
    log.info("simulated %.1f s in %.1f s of wall time (%d events)", env.now, wall_s, world.events)
    return RunResult(summary, first.ledger, first.timeline, feeds[cluster.source.name].items.paths,
                     ledgers={n: f.sc.ledger for n, f in feeds.items()},
                     source_paths={n: f.items.paths for n, f in feeds.items()})
