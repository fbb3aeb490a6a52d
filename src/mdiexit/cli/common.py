"""What the command modules share: the `run` defaults shown in --help, and finishing a run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_CLUSTER = Path("examples/edge4.yaml")  # every command that takes --cluster defaults to it


class RunDefault:
    """A `run` option left unset: RunOptions' default applies (read there, the one place it is stated, and only
    when the command runs or its help is printed, so that parsing loads no runtime)."""

    def __init__(self, field: str):
        self.field = field

    def __str__(self) -> str:
        from mdiexit.runtime.options import RunOptions

        return f"{getattr(RunOptions(), self.field)}"


def stream_timing_args(p: argparse.ArgumentParser, virtual: bool = False) -> None:
    """--rate, --duration and --warmup of a run (`run`) or its simulation (``virtual``: `simulate`)."""
    p.add_argument("--rate", type=float, default=RunDefault("rate"),
                   help=f"items {'offered' if virtual else 'admitted'} per second (default %(default)s)")
    p.add_argument("--duration", type=float, default=RunDefault("duration_s"),
                   help=f"seconds of admission{', virtual' if virtual else ''} (default %(default)s)")
    p.add_argument("--warmup", type=float, default=RunDefault("warmup_s"),
                   help="seconds excluded from throughput (default %(default)s)")


def bench_command(bsub, name: str, help: str, func, doc, cluster_arg, out: str, duration_s: float,
                  duration_help: str) -> argparse.ArgumentParser:
    """A bench's subcommand with the arguments every measured bench takes: --cluster, --out and --duration."""
    p = bsub.add_parser(name, help=help, description=doc(func))
    cluster_arg(p)
    p.add_argument("--out", type=Path, default=Path(out))
    p.add_argument("--duration", type=float, default=duration_s, help=f"{duration_help} (default {duration_s:g})")
    p.set_defaults(func=func)
    return p


def finish_run(result, out: Path) -> int:
    from mdiexit.runtime.report import print_summary, write_results

    path = write_results(result, out)
    summary = result.summary
    print_summary(summary)
    print(f"summary written to {path}")
    if summary.get("error"):
        print(f"mdiexit: error: {summary['error']}", file=sys.stderr)
    return 1 if summary["lost"] or summary["duplicates"] or summary.get("error") else 0


def device_profile_arg(p: argparse.ArgumentParser) -> None:
    """--device-profile, on every command that takes a cluster (cli.main exports it to the profiler)."""
    p.add_argument("--device-profile", type=Path, default=None, metavar="FILE",
                   help="emulated devices: take the host's task times from FILE, or profile the host once and store "
                        "them there, so that every run naming FILE emulates the same devices, on any host (default: "
                        "this host's, profiled once and kept in ~/.cache/mdiexit; none: profile at every start)")
