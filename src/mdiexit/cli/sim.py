"""The simulator's commands: `mdiexit simulate` (a run in virtual time, DESIGN §4), `mdiexit bench simulator`
(the simulator against the runtime, and at scale) and `mdiexit bench energy` (joules per item by mode and
objective, simulated). `mdiexit.cli` adds them to its parser."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from mdiexit.cli.common import RunDefault, bench_command, device_profile_arg, finish_run, stream_timing_args
from mdiexit.cli.model import UsageError, floats, items_arg
from mdiexit.policies.modes import ADMISSIONS, MODES

SIM_TIMES = ("profile", "macs")  # the one list is mdiexit.sim.model.TIMES; this module must not import it (simpy)


def cmd_simulate(a: argparse.Namespace) -> int:
    """Simulate a run of the cluster file in virtual time: SimPy drives the runtime's own node and source cores and
    policies; service times are each task's profiled time on this host (per batch size) x the node's slowdown, as
    the calibrated emulation makes them; links are each node's egress token bucket plus latency; heartbeats go
    every heartbeat_ms. Each item is a real test item whose exit and label are exact. Writes what `mdiexit run`
    writes (DIR/summary.json, items.csv, timeline.csv)."""
    from mdiexit.runtime.options import RunOptions
    from mdiexit.sim.run import simulate

    given = dict(mode=a.mode, rate=a.rate, duration_s=a.duration, warmup_s=a.warmup, deadline_ms=a.deadline_ms,
                 admission=a.admission, target_accuracy=a.target_accuracy, target_backlog_ms=a.target_backlog_ms,
                 thresholds=tuple(floats(a.thresholds, "--thresholds")) if a.thresholds else None,
                 max_backlog_ms=a.max_backlog_ms, max_wait_ms=a.max_wait_ms, live=False, data_dir=a.data_dir,
                 items=a.items, drain_timeout_s=a.drain_timeout)
    opts = RunOptions(**{k: v for k, v in given.items() if not isinstance(v, RunDefault)})
    rollout = None
    if a.rollout is not None:
        from mdiexit.sim.rollout import RolloutRequest

        rollout = RolloutRequest(a.rollout, at_s=a.rollout_at, steps=tuple(floats(a.rollout_steps, "--rollout-steps")),
                                 step_s=a.rollout_step_s, shadow=a.rollout_shadow)
    result = simulate(a.cluster, opts, seed=a.seed, times=a.times, rollout=rollout)
    sim = result.summary["simulated"]
    print(f"simulated {sim['virtual_s']:.1f} s in {sim['wall_s']:.1f} s ({sim['events']} events)")
    return finish_run(result, a.out)


def cmd_bench_energy(a: argparse.Namespace) -> int:
    """Joules per item of mdi, ddi-exit, mdi-exit and energy-aware mdi-exit (`objective: energy`) on a cluster whose
    nodes have power models, simulated at the same rates and accuracy target (fixed admission at the cheapest
    thresholds that reach it): at shares of mdi's and of mdi-exit's planned limits, each mode near its own limit,
    and each objective overloaded (its capacity). Beside each figure, the planner's floor: the fewest joules per item
    the power models allow at that rate. Writes --out (JSON)."""
    from mdiexit.bench.energy import EnergyBenchOptions, bench_energy

    o = EnergyBenchOptions(duration_s=a.duration, target_accuracy=a.target_accuracy, data_dir=a.data_dir)
    try:
        bench_energy(a.cluster, a.out, o)
    except ValueError as e:  # no power model, or a rate past a limit
        raise UsageError(str(e)) from None
    return 0


def cmd_bench_simulator(a: argparse.Namespace) -> int:
    """Validation: the runtime against the simulator on edge4, camera4 and a partial mesh with partial task
    holdings, modes mdi, ddi-exit and mdi-exit: the rate search's sustained throughput and the p95 latency at 0.8x
    the runtime's sustained rate, as ratios (the runtime time-dilated, --dilation). Scale: generated meshes of 10,
    100 and 1,000 devices, every mode: the throughput at the target accuracy and the simulator's wall time. Writes
    simulator.json and results.md."""
    from mdiexit.bench.simulator import SimBenchOptions, bench_simulator

    tuned = {k: v for k, v in (("probe_s", a.probe_s), ("adaptive_s", a.adaptive_s), ("refine_steps", a.refine_steps),
                               ("dilation", a.dilation)) if v is not None}  # None: SimBenchOptions' own
    o = SimBenchOptions(**tuned, sizes=tuple(int(x) for x in a.sizes.split(",")) if a.sizes else (),
                        modes=tuple(a.modes.split(",")) if a.modes else None,
                        clusters=tuple(a.clusters.split(",")) if a.clusters else None,
                        validate=not a.no_validate, data_dir=a.data_dir)
    bench_simulator(a.out, o)
    return 0


def add_sim_commands(sub: argparse._SubParsersAction, bsub: argparse._SubParsersAction,
                     cluster_arg: Callable[[argparse.ArgumentParser], None], doc: Callable[[Callable], str]) -> None:
    s = sub.add_parser("simulate", help="simulate a run in virtual time (same outputs as `run`)",
                       description=doc(cmd_simulate))
    cluster_arg(s)
    s.add_argument("--mode", default=None, choices=list(MODES), help="override the cluster file's mode")
    s.add_argument("--rollout", type=Path, default=None, metavar="PACKAGE",
                   help="play `mdiexit rollout` of this package during the run (summary: rollouts)")
    s.add_argument("--rollout-at", type=float, default=10.0, help="when, s after admission starts (default 10)")
    s.add_argument("--rollout-steps", default="0.05,0.25,1", help="its steps (default 0.05,0.25,1)")
    s.add_argument("--rollout-step-s", type=float, default=20.0, help="seconds each step holds (default 20)")
    s.add_argument("--rollout-shadow", type=float, default=0.05, help="its shadow share (default 0.05)")
    s.add_argument("--admission", default=RunDefault("admission"), choices=ADMISSIONS,
                   help="fixed | rate | thresholds, as for `run` (default %(default)s)")
    stream_timing_args(s, virtual=True)
    s.add_argument("--drain-timeout", type=float, default=RunDefault("drain_timeout_s"),
                   help="virtual seconds to wait for the last results (default %(default)s)")
    s.add_argument("--deadline-ms", type=float, default=None, help="each item's deadline, as for `run`")
    s.add_argument("--target-accuracy", type=float, default=None,
                   help="rate adaptation's accuracy target (default: final-exit validation accuracy - 0.01)")
    s.add_argument("--target-backlog-ms", type=float, default=RunDefault("target_backlog_ms"),
                   help="backlog the controllers aim for (default %(default)s)")
    s.add_argument("--thresholds", default=None, help="comma-separated exit thresholds, the last 0")
    s.add_argument("--max-backlog-ms", type=float, default=RunDefault("max_backlog_ms"),
                   help="admit nothing while the largest backlog is above this (default %(default)s)")
    s.add_argument("--max-wait-ms", type=float, default=RunDefault("max_wait_ms"),
                   help="reject what would wait longer than this to be admitted (default %(default)s)")
    s.add_argument("--data-dir", type=Path, default=None, help="the dataset's folder")
    s.add_argument("--items", type=items_arg, default="test",
                   help="test: the test split, cycled; all | N: the items of --data-dir in order, once (default test)")
    s.add_argument("--seed", type=int, default=0, help="seed of the heartbeat phases (default 0)")
    s.add_argument("--times", default="profile", choices=SIM_TIMES,
                   help="service times: profiled here x slowdown, or MACs at rated speed (default %(default)s)")
    s.add_argument("--out", type=Path, default=Path("runs/sim"), help="folder for summary.json (default "
                                                                      "%(default)s)")
    s.set_defaults(func=cmd_simulate)

    e = bench_command(bsub, "energy", "joules per item: mdi, ddi-exit, mdi-exit and energy-aware mdi-exit at the same "
                      "rates, simulated", cmd_bench_energy, doc, cluster_arg, "docs/results/energy.json", 20.0,
                      "virtual seconds of admission per run")
    e.add_argument("--target-accuracy", type=float, default=None,
                   help="default: the final exit's validation accuracy - 0.01")
    e.add_argument("--data-dir", type=Path, default=None)

    b = bsub.add_parser("simulator", help="the simulator against the runtime, and at 10..1000 devices",
                        description=doc(cmd_bench_simulator))
    b.add_argument("--out", type=Path, default=Path("docs/results/simulator"))
    b.add_argument("--probe-s", type=float, default=None,
                   help="seconds per rate-search probe, the first third warm-up (default 12)")
    b.add_argument("--adaptive-s", type=float, default=None,
                   help="virtual seconds of each scale run with rate adaptation (default 10)")
    b.add_argument("--refine-steps", type=int, default=None,
                   help="bisection steps of each rate search (default 2: the bench runs the runtime too)")
    b.add_argument("--dilation", type=float, default=None, metavar="K",
                   help="run the runtime side K times slower (its clock, mdiexit.clock), so that this "
                        "host's own per-message time counts K times less (default 2; 1: none)")
    b.add_argument("--sizes", default="10,100,1000", help="generated mesh sizes; empty: no scale part")
    b.add_argument("--modes", default=None, help="comma-separated subset of modes (default: all)")
    b.add_argument("--clusters", default=None,
                   help="validation clusters, a subset of edge4,camera4,partial (default: all)")
    b.add_argument("--no-validate", action="store_true", help="skip the runtime comparison (scale part only)")
    b.add_argument("--data-dir", type=Path, default=None)
    device_profile_arg(b)  # pins the devices of both sides: the runtime's nodes and the simulated ones
    b.set_defaults(func=cmd_bench_simulator)
