"""The `mdiexit bench` command group: the engine, the runtime, admission, compression, chaos, the emulation and
the links (calibration, network, overhead, join), several sources (multisource) and the headline experiments
(paper). `bench serve` and `bench
simulator` live beside their commands (cli/serve.py, cli/sim.py). Each bench imports its module when it runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from mdiexit.bench.ratesearch import REFINE_STEPS, bracket_width
from mdiexit.cli.common import bench_command, device_profile_arg
from mdiexit.cli.model import DEFAULT_PACKAGE


def cmd_bench_network(a: argparse.Namespace) -> int:
    """mdi-exit with rate adaptation while the source's uplink drops from --high to --low Mbit/s at --drop-at and
    recovers at --back-at, three times: measured link estimates, the cluster file's figures (static), and no
    bandwidth given (unlimited). Writes throughput, p95 and accuracy within the deadline per phase, the estimate's
    tracking time, the estimation's bytes on the wire, a plot, and each run's results beside --out. With --repeats N
    the variants take turns N times and each figure is the median over the runs."""
    from mdiexit.bench.network import VARIANTS, bench_network

    variants = tuple(a.variants.split(",")) if a.variants else tuple(VARIANTS)
    if unknown := set(variants) - set(VARIANTS):
        raise SystemExit(f"mdiexit: error: --variants: unknown {', '.join(sorted(unknown))}; choose from "
                         f"{', '.join(VARIANTS)}")
    if a.repeats < 1:
        raise SystemExit("mdiexit: error: --repeats: expected at least 1")

    bench_network(a.cluster, a.out, duration_s=a.duration, drop_at_s=a.drop_at, back_at_s=a.back_at,
                  high_mbps=a.high, low_mbps=a.low, warmup_s=a.warmup, target_accuracy=a.target_accuracy,
                  variants=variants, repeats=a.repeats)
    return 0


def cmd_bench_calibration(a: argparse.Namespace) -> int:
    """Start the cluster --runs times, each as its own `mdiexit run` of 1.5 s, both with the host profile and with
    each node profiling itself (--self-profile), in turn; compare every node's calibrated times and the planner's
    ideal across the runs. Writes --out (JSON) and prints the spreads."""
    from mdiexit.bench.calibration import bench_calibration

    if a.runs < 2:
        raise SystemExit("mdiexit: error: --runs: expected at least 2 (a spread needs two runs)")
    bench_calibration(a.cluster, a.runs, a.out)
    return 0


def cmd_bench_overhead(a: argparse.Namespace) -> int:
    """The runtime's own host CPU per item per node visit: each node process's CPU less the model's calls, over
    whole runs of the cluster (mdi-exit, mdi and ddi-exit, under capacity and saturated), a chain of one worker per
    task, and an idle run (the fixed cost per second). Writes --out (JSON): cpu_us_per_item_hop, by_kind (messages
    per item), by_process, the marginal µs per visit and each process's fixed cost."""
    from mdiexit.bench.overhead import OverheadBenchOptions, bench_overhead

    bench_overhead(a.cluster, a.out, OverheadBenchOptions(duration_s=a.duration))
    return 0


def cmd_bench_multisource(a: argparse.Namespace) -> int:
    """Several cameras sharing one cluster: every source under rate adaptation (shares against weights, Jain's index,
    accuracy against each floor), the same devices with one source (the total without sharing), one source switched
    off from --idle-from to --idle-to s (how long re-sharing takes), and the simulator beside the runtime. Writes
    --out/multisource.json and multisource.png."""
    from mdiexit.bench.multisource import MultisourceBenchOptions, bench_multisource

    if a.repeats < 1:
        raise SystemExit("mdiexit: error: --repeats: expected at least 1")

    bench_multisource(a.cluster, a.out, MultisourceBenchOptions(
        duration_s=a.duration, rate=a.rate, idle_source=a.idle_source, idle_from_s=a.idle_from, idle_to_s=a.idle_to,
        repeats=a.repeats))
    return 0


def cmd_bench_rollout(a: argparse.Namespace) -> int:
    """A roll-out while the site serves at --rate: at --at s the operator rolls out a broken version of --package
    (every exit answers another class; the same shapes and speed), which must be rolled back, then, in a run of its
    own, the same model re-released, which must complete, and the same roll-out simulated; a last run has a device
    join. Per run: the outcome and reason, rejected and lost items, the share answered by the new version, and per
    second the share admitted on it, the results and their p95. Writes --out/rollout.json and rollout.png."""
    from mdiexit.bench.rollout import RolloutBenchOptions, bench_rollout

    bench_rollout(a.cluster, a.package, a.out, RolloutBenchOptions(
        rate=a.rate, duration_s=a.duration, at_s=a.at, step_s=a.step_s))
    return 0


def cmd_bench_join(a: argparse.Namespace) -> int:
    """A device joins the cluster while it runs at --rate: the rejected and lost items, and the latency of the items
    admitted before the join, in the --window seconds after it (while the package travels) and after that."""
    from mdiexit.bench.join import JoinBenchOptions, bench_join

    bench_join(a.cluster, a.out, JoinBenchOptions(rate=a.rate, duration_s=a.duration, at_s=a.at))
    return 0


def cmd_bench_engine(a: argparse.Namespace) -> int:
    from mdiexit.bench.engine import bench_engine

    bench_engine(a.package, repeats=a.repeats, threads=a.threads, checkpoint=a.checkpoint)
    return 0


def cmd_bench_paper(a: argparse.Namespace) -> int:
    """Experiment 1: highest sustainable throughput at the target accuracy (rate search; mdi-exit also with rate
    adaptation). Experiment 2: accuracy within a 1 s deadline at fixed rates from 0.5x to 3x mdi's capacity."""
    from mdiexit.bench.paper import PaperOptions, bench_paper

    o = PaperOptions(probe_s=a.probe_s, adaptive_s=a.adaptive_s, exp2_s=a.exp2_s, data_dir=a.data_dir,
                     modes=tuple(a.modes.split(",")) if a.modes else None,
                     experiments=tuple(int(x) for x in a.experiments.split(",")), refine_steps=a.refine_steps,
                     keep_runs=a.keep_runs, mdi_capacity=a.mdi_capacity)
    bench_paper(a.cluster, a.out, o)
    return 0


def cmd_bench_admission(a: argparse.Namespace) -> int:
    from mdiexit.bench.admission import bench_admission

    bench_admission(a.cluster, a.out, duration_s=a.duration, target_accuracy=a.target_accuracy)
    return 0


def cmd_bench_compression(a: argparse.Namespace) -> int:
    from mdiexit.bench.compression import bench_compression

    bench_compression(a.cluster, a.bandwidth, a.duration, a.target_accuracy, a.out)
    return 0


def cmd_bench_chaos(a: argparse.Namespace) -> int:
    """mdi-exit with rate adaptation for --duration seconds while a seeded schedule kills (kill -9), hangs
    (SIGSTOP) and gracefully removes (SIGTERM) workers, each back --down seconds later. Writes chaos.json (lost,
    duplicates, re-dispatched, throughput before/during/after each event, recovery times), chaos.png and the
    run's summary; exit status 1 if any item was lost or duplicated."""
    from mdiexit.bench.chaos import bench_chaos

    r = bench_chaos(a.cluster, a.out, a.duration, a.period, a.down, a.seed, a.target_accuracy)
    return 1 if r["lost"] or r["duplicates"] else 0


def cmd_bench_runtime(a: argparse.Namespace) -> int:
    from mdiexit.bench.runtime import bench_runtime

    bench_runtime(a.cluster, repeats=a.repeats, duration_s=a.duration, slowdown=a.slowdown, out=a.out,
                  security_rate=a.security_rate)
    return 0


def add_bench_commands(bsub: argparse._SubParsersAction, cluster_arg: Callable[[argparse.ArgumentParser], None],
                       json_out_arg: Callable[[argparse.ArgumentParser], None],
                       doc: Callable[[Callable], str]) -> None:
    """`bench engine | runtime | admission | compression | chaos | calibration | network | ... | paper`."""
    be = bsub.add_parser("engine", help="per-task latency at batch 1 and 32, ONNX Runtime vs torch")
    be.add_argument("package", type=Path, nargs="?", default=DEFAULT_PACKAGE)
    be.add_argument("--checkpoint", type=Path, default=None, help="model.pt for the torch backend")
    be.add_argument("--repeats", type=int, default=50)
    be.add_argument("--threads", type=int, default=1)
    be.set_defaults(func=cmd_bench_engine)
    br = bsub.add_parser("runtime", help="per-hop overhead (plain and CurveZMQ) vs task time, the cost of "
                                         "CurveZMQ on the cluster, and mdi-exit scaling on 1/2/4 workers")
    cluster_arg(br)
    br.add_argument("--repeats", type=int, default=200)
    br.add_argument("--duration", type=float, default=12.0, help="seconds per scaling run")
    br.add_argument("--slowdown", type=float, default=None, help="worker slowdown (default: the workers' median)")
    br.add_argument("--security-rate", type=float, default=1000.0,
                    help="fixed items/s offered in the CurveZMQ-vs-insecure runs, above the cluster's capacity "
                         "(default 1000)")
    json_out_arg(br)
    br.set_defaults(func=cmd_bench_runtime)
    ba = bsub.add_parser("admission", help="rate and threshold adaptation against fixed-rate baselines")
    cluster_arg(ba)
    ba.add_argument("--out", type=Path, default=Path("docs/results/admission"))
    ba.add_argument("--duration", type=float, default=60.0, help="seconds of the rate-adaptation run")
    ba.add_argument("--target-accuracy", type=float, default=None,
                    help="default: the final exit's test accuracy - 0.01")
    ba.set_defaults(func=cmd_bench_admission)
    bc = bsub.add_parser("compression", help="mdi-exit with learned codes vs lz4 vs zstd vs raw features on slow links")
    cluster_arg(bc)
    bc.add_argument("--bandwidth", type=float, default=10.0, help="Mbit/s of every node's egress (default 10)")
    bc.add_argument("--duration", type=float, default=30.0, help="seconds per run (the second half is measured)")
    bc.add_argument("--target-accuracy", type=float, default=None)
    json_out_arg(bc)
    bc.set_defaults(func=cmd_bench_compression)
    bx = bsub.add_parser("chaos", help="mdi-exit while workers crash, hang, leave and come back",
                         description=doc(cmd_bench_chaos))
    cluster_arg(bx)
    bx.add_argument("--out", type=Path, default=Path("docs/results/chaos"), help="folder for chaos.json and chaos.png")
    bx.add_argument("--duration", type=float, default=140.0, help="seconds of admission (default 140)")
    bx.add_argument("--period", type=float, default=20.0, help="seconds between events (default 20)")
    bx.add_argument("--down", type=float, default=10.0, help="seconds until the node is back (default 10)")
    bx.add_argument("--seed", type=int, default=0, help="seed of the schedule (which node each event hits)")
    bx.add_argument("--target-accuracy", type=float, default=None)
    bx.set_defaults(func=cmd_bench_chaos)
    add_link_bench_commands(bsub, cluster_arg, doc)  # bench calibration, network, overhead, join
    br = bsub.add_parser("rollout", description=doc(cmd_bench_rollout),
                         help="roll a broken and a good version out while the site serves; a device joins")
    cluster_arg(br)
    br.add_argument("--package", type=Path, default=Path("models/mobilenetv2-fmnist"),
                    help="the served package, whose versions are rolled out (default %(default)s)")
    br.add_argument("--out", type=Path, default=Path("docs/results"), help="folder for rollout.json and .png")
    br.add_argument("--rate", type=float, default=150.0, help="items/s offered (default 150)")
    br.add_argument("--duration", type=float, default=70.0, help="seconds of admission per run (default 70)")
    br.add_argument("--at", type=float, default=10.0, help="when the roll-out starts, s (default 10)")
    br.add_argument("--step-s", type=float, default=10.0, help="seconds each step holds (default 10)")
    br.set_defaults(func=cmd_bench_rollout)
    bm = bsub.add_parser("multisource", description=doc(cmd_bench_multisource),
                         help="several cameras sharing one cluster: shares by weight, re-sharing when one goes idle, "
                              "the simulator beside")
    bm.add_argument("--cluster", type=Path, default=Path("examples/cameras3.yaml"),
                    help="a cluster file with several sources (default examples/cameras3.yaml)")
    device_profile_arg(bm)
    bm.add_argument("--out", type=Path, default=Path("docs/results"), help="folder for multisource.json and .png")
    bm.add_argument("--duration", type=float, default=40.0, help="seconds of admission per run (default 40)")
    bm.add_argument("--rate", type=float, default=300.0,
                    help="where rate adaptation starts, the site's total items/s (default 300)")
    bm.add_argument("--repeats", type=int, default=3, help="runs of the shares scenario; each figure is their median "
                                                           "(default 3)")
    bm.add_argument("--idle-source", default=None, help="the source switched off (default: the second)")
    bm.add_argument("--idle-from", type=float, default=20.0, help="when it is switched off, s (default 20)")
    bm.add_argument("--idle-to", type=float, default=40.0, help="when it is back, s (default 40)")
    bm.set_defaults(func=cmd_bench_multisource)
    bp = bsub.add_parser("paper", help="both headline experiments for every mode: paper.json, PNG plots, table",
                         description=doc(cmd_bench_paper))
    cluster_arg(bp)
    bp.add_argument("--out", type=Path, default=Path("docs/results"))
    bp.add_argument("--probe-s", type=float, default=12.0,
                    help="seconds per rate-search probe, the first third warm-up (default 12)")
    bp.add_argument("--adaptive-s", type=float, default=40.0, help="seconds of the rate-adaptation run")
    bp.add_argument("--exp2-s", type=float, default=10.0, help="seconds per experiment-2 run")
    bp.add_argument("--data-dir", type=Path, default=None)
    bp.add_argument("--modes", default=None, help="comma-separated subset of modes (default: all)")
    bp.add_argument("--experiments", default="1,2",
                    help="which experiments to run (default: 1,2; experiment 2 alone still searches mdi's capacity, "
                         "its unit, unless --mdi-capacity gives it)")
    bp.add_argument("--mdi-capacity", type=float, default=None, metavar="ITEMS_PER_S",
                    help="experiment 2's unit, instead of measuring it: its rates are 0.5x..3x this")
    bp.add_argument("--keep-runs", type=Path, default=None, metavar="DIR",
                    help="keep every run's summary.json, items.csv and timeline.csv in DIR/NAME (default: none)")
    bp.add_argument("--refine-steps", type=int, default=REFINE_STEPS,
                    help=f"bisection steps of each rate search after the doubling (default {REFINE_STEPS}: a "
                         f"{bracket_width(REFINE_STEPS) * 100:.1f} %% bracket)")
    bp.set_defaults(func=cmd_bench_paper)


def add_link_bench_commands(bsub: argparse._SubParsersAction,
                            cluster_arg: Callable[[argparse.ArgumentParser], None],
                            doc: Callable[[Callable], str]) -> None:
    bc = bsub.add_parser("calibration", help="how much the emulated devices move between runs: host profile vs "
                                             "each node profiling itself", description=doc(cmd_bench_calibration))
    cluster_arg(bc)
    bc.add_argument("--runs", type=int, default=5, help="runs of each way (default 5)")
    bc.add_argument("--out", type=Path, default=Path("docs/results/calibration.json"))
    bc.set_defaults(func=cmd_bench_calibration)
    bn = bsub.add_parser("network", help="mdi-exit while the source's uplink drops and recovers: measured vs static "
                                         "vs unlimited link figures", description=doc(cmd_bench_network))
    bn.add_argument("--cluster", type=Path, default=Path("examples/camera4.yaml"), help="default examples/camera4.yaml")
    device_profile_arg(bn)
    bn.add_argument("--out", type=Path, default=Path("docs/results/network.json"))
    bn.add_argument("--duration", type=float, default=70.0, help="seconds of admission per run (default 70)")
    bn.add_argument("--drop-at", type=float, default=20.0, help="when the uplink drops, s (default 20)")
    bn.add_argument("--back-at", type=float, default=50.0, help="when it recovers, s (default 50)")
    bn.add_argument("--high", type=float, default=20.0, help="Mbit/s before and after (default 20)")
    bn.add_argument("--low", type=float, default=2.0, help="Mbit/s while congested (default 2: a 10x drop that binds)")
    bn.add_argument("--warmup", type=float, default=5.0, help="seconds not measured at the start (default 5)")
    bn.add_argument("--target-accuracy", type=float, default=None)
    bn.add_argument("--variants", default=None,
                    help="comma-separated subset of measured,static,unlimited (default: all of them)")
    bn.add_argument("--repeats", type=int, default=1,
                    help="runs per variant, taking turns; each figure is then the median (default 1)")
    bn.set_defaults(func=cmd_bench_network)
    bench_command(bsub, "overhead", "the runtime's own CPU per item per node visit, by run, process and message kind",
                  cmd_bench_overhead, doc, cluster_arg, "docs/results/overhead.json", 10.0,
                  "seconds of admission per run")
    bj = bench_command(bsub, "join", "what a device joining a busy cluster costs the data", cmd_bench_join, doc,
                       cluster_arg, "docs/results/join.json", 30.0, "seconds of admission")
    bj.add_argument("--rate", type=float, default=600.0, help="items/s offered (default 600)")
    bj.add_argument("--at", type=float, default=9.0, help="when the device joins, s (default 9)")
