"""The CLI of the benches that start the cluster as a user would, to measure the emulation, the links and the
runtime's own cost: `bench calibration`, `bench network`, `bench overhead` and `bench join`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from mdiexit.cli.common import bench_command, device_profile_arg


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


def cmd_bench_join(a: argparse.Namespace) -> int:
    """A device joins the cluster while it runs at --rate: the rejected and lost items, and the latency of the items
    admitted before the join, in the --window seconds after it (while the package travels) and after that."""
    from mdiexit.bench.join import JoinBenchOptions, bench_join

    bench_join(a.cluster, a.out, JoinBenchOptions(rate=a.rate, duration_s=a.duration, at_s=a.at))
    return 0


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
