"""The one command line: `mdiexit train | export | profile | bench ...`. Heavy imports happen per command."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mdiexit.cli.bench import add_bench_commands
from mdiexit.cli.common import DEFAULT_CLUSTER, RunDefault, device_profile_arg, finish_run, stream_timing_args
from mdiexit.cli.errors import missing_extra, user_errors
from mdiexit.cli.model import DEFAULT_PACKAGE, add_model_commands, floats, items_arg
from mdiexit.cli.ops import add_ops_commands
from mdiexit.cli.plan import add_plan_commands
from mdiexit.cli.serve import add_bench_serve, add_keys_client, add_serve_commands
from mdiexit.cli.sim import add_sim_commands
from mdiexit.policies.modes import ADMISSIONS, MODES


def cmd_profile(a: argparse.Namespace) -> int:
    from mdiexit.package import load_package
    from mdiexit.profile_report import print_profile

    print_profile(load_package(a.package))
    return 0


def _run_opts(a: argparse.Namespace):
    from mdiexit.runtime.options import RunOptions

    given = dict(mode=a.mode, rate=a.rate, duration_s=a.duration, warmup_s=a.warmup, deadline_ms=a.deadline_ms,
                 live=not a.quiet, data_dir=a.data_dir, admission=a.admission, target_accuracy=a.target_accuracy,
                 target_backlog_ms=a.target_backlog_ms, net=a.net, max_backlog_ms=a.max_backlog_ms,
                 max_wait_ms=a.max_wait_ms, metrics_port=a.metrics_port, metrics_addr=a.metrics_addr,
                 insecure=a.insecure, keys_dir=a.keys_dir, items=items_arg(a.items),
                 self_profile=getattr(a, "self_profile", False), fps=getattr(a, "fps", None),
                 sink=getattr(a, "sink", None), dilation=getattr(a, "dilation", RunDefault("dilation")),
                 sources=tuple(a.name.split(",")) if getattr(a, "name", None) else None)
    if a.thresholds is not None:
        given["thresholds"] = tuple(floats(a.thresholds, "--thresholds"))
    return RunOptions(**{k: v for k, v in given.items() if not isinstance(v, RunDefault)})


def cmd_run(a: argparse.Namespace) -> int:
    """Start every node of the cluster file as its own process (ZeroMQ over TCP), stream the test split through
    it at --rate for --duration seconds with a live view, drain, and write the summary. A worker that crashes,
    hangs or leaves is declared down and its items are dispatched again. Exit status 1 if any item was lost or
    duplicated."""
    from mdiexit.runtime.launch import run_cluster

    return finish_run(run_cluster(a.cluster, _run_opts(a)), a.out)


def cmd_source(a: argparse.Namespace) -> int:
    from mdiexit.runtime.launch import run_cluster

    return finish_run(run_cluster(a.cluster, _run_opts(a), spawn=False), a.out)


def cmd_worker(a: argparse.Namespace) -> int:
    from mdiexit.runtime.launch import run_worker

    if a.join:
        from mdiexit.runtime.launch import run_joiner

        tasks = [int(t) for t in a.tasks.split(",")] if a.tasks else None
        return run_joiner(a.join, a.name, a.workdir or Path("runs") / f"join-{a.name}", a.key, a.source_key,
                          a.insecure, a.dilation, host=a.host, port=a.port, tasks=tasks, threads=a.threads,
                          slowdown=a.slowdown, bandwidth_mbps=a.bandwidth_mbps, latency_ms=a.latency_ms)
    if a.cluster is None:
        raise SystemExit("mdiexit: error: give --cluster F (a member of the cluster file) or --join tcp://SOURCE:PORT")
    return run_worker(a.cluster, a.name, a.mode, pace=not a.no_pace, insecure=a.insecure, keys_dir=a.keys_dir,
                      key_file=a.key, metrics_port=a.metrics_port, metrics_addr=a.metrics_addr,
                      host_profile=a.host_profile, dilation=a.dilation)


def cmd_keys(a: argparse.Namespace) -> int:
    from mdiexit.config import load_cluster
    from mdiexit.security import create_client_key, create_keys

    names = [n.name for n in load_cluster(a.cluster).nodes] if a.cluster else a.names
    if a.out is None:
        raise SystemExit("mdiexit: error: give the keys folder: --out DIR")
    if not names:
        raise SystemExit("mdiexit: error: name the nodes: --cluster F, or --names a,b,c")
    publics = create_keys(names, a.out, overwrite=a.force)
    for name, key in publics.items():
        print(f"{name}: public {key}  secret {a.out / (name + '.key_secret')} (mode 600)")
    if a.cluster:
        print(f"client key for `mdiexit serve`: {create_client_key(a.out, overwrite=a.force)} (more: `mdiexit keys "
              "client`)")
    print(f"set `keys_dir: {a.out}` in the cluster file (or pass --keys-dir); copy each node's .key_secret to "
          f"that device only, and every .key to all of them")
    return 0


def cmd_keys_allow(a: argparse.Namespace) -> int:
    from mdiexit.security import allow_key, read_public

    key = read_public(Path(a.public_key)).decode() if Path(a.public_key).is_file() else a.public_key
    path = allow_key(a.keys_dir, a.name, key)
    print(f"{a.name} may join: {path}")
    print(f"on that device: mdiexit worker --join tcp://SOURCE_HOST:SOURCE_PORT --name {a.name} --key "
          f"{a.name}.key_secret --source-key {a.keys_dir / 'SOURCE.key'} --host DEVICE_HOST --port PORT")
    return 0


def _security_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keys-dir", type=Path, default=None,
                   help="folder of node keys from `mdiexit keys` (default: the cluster file's keys_dir; a one-machine "
                        "`run` without keys makes ephemeral ones)")
    p.add_argument("--insecure", action="store_true",
                   help="no CurveZMQ: links are neither authenticated nor encrypted (debugging only)")


def _run_args(p: argparse.ArgumentParser) -> None:
    _cluster_arg(p)
    p.add_argument("--mode", default=None, choices=list(MODES), help="override the cluster file's mode")
    stream_timing_args(p)
    p.add_argument("--deadline-ms", type=float, default=None,
                   help="each item's deadline: past it, an item is dropped unrun and counted expired; the summary "
                        "reports the accuracy within it")
    p.add_argument("--admission", default=RunDefault("admission"), choices=ADMISSIONS,
                   help="fixed: admit at --rate with the package's thresholds; rate: adapt the rate at the cheapest "
                        "thresholds meeting --target-accuracy; thresholds: fixed --rate, adapt the thresholds "
                        "(default %(default)s)")
    p.add_argument("--target-accuracy", type=float, default=None,
                   help="rate adaptation's accuracy target (default: final-exit validation accuracy - 0.01)")
    p.add_argument("--target-backlog-ms", type=float, default=RunDefault("target_backlog_ms"),
                   help="backlog the controllers aim for (default %(default)s)")
    p.add_argument("--thresholds", default=None,
                   help="comma-separated exit thresholds, one per task, the last 0 (fixed admission; default: the "
                        "package's)")
    gate_args(p)
    p.add_argument("--data-dir", type=Path, default=None,
                   help="the dataset's folder, or any image folder to stream with --items all|N")
    p.add_argument("--items", default="test",
                   help="test: the package's test split, cycled for --duration; all: every item of --data-dir in "
                        "order, each once; N: the first N of them; video:FILE_OR_URL: a video file, rtsp:// stream "
                        "or /dev/videoN, the newest frame at the admission rate, older ones skipped (default test)")
    p.add_argument("--fps", type=float, default=None,
                   help="with --items video:FILE: play the file at this frame rate instead of its own")
    p.add_argument("--sink", default=None, metavar="SINK",
                   help="also send every item's outcome, as it is settled, to the site's systems: one JSON object "
                        "each (label, class name, exit, confidence, latency): jsonl:PATH appends a line to PATH; "
                        "mqtt://[USER@]HOST[:PORT]/TOPIC publishes it at QoS 1 (mqtts:// for TLS; password from "
                        "MDIEXIT_MQTT_PASSWORD, a private CA from MDIEXIT_MQTT_CA)")
    p.add_argument("--quiet", action="store_true", help="no live view")
    p.add_argument("--net", default=RunDefault("net"), choices=["app", "namespaces"],
                   help="app: the nodes pace their links; namespaces: one network namespace per worker, "
                        "bandwidths shaped by the kernel with tc tbf (root, Linux) (default %(default)s)")
    p.add_argument("--self-profile", action="store_true",
                   help="each node profiles itself at start-up, beside the others starting, instead of taking the "
                        "host profile made before they start (the old emulation, for comparison)")
    p.add_argument("--out", type=Path, default=Path("runs/last"), help="folder for summary.json")
    _security_args(p)


def gate_args(p: argparse.ArgumentParser) -> None:
    """The admission gate's and the metrics endpoint's options, shared by run, source and serve."""
    p.add_argument("--max-backlog-ms", type=float, default=RunDefault("max_backlog_ms"),
                   help="admit nothing while the largest backlog in the cluster is above this (default %(default)s)")
    p.add_argument("--max-wait-ms", type=float, default=RunDefault("max_wait_ms"),
                   help="reject (overloaded) an item that would wait longer than this to be admitted "
                        "(default %(default)s)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve the source's Prometheus metrics on this port (default: metrics_port in the file)")
    p.add_argument("--metrics-addr", default=None,
                   help="address the metrics endpoint binds to (default 127.0.0.1: this machine only)")


def _cluster_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", type=Path, default=DEFAULT_CLUSTER, help="cluster file (YAML; default %(default)s)")
    device_profile_arg(p)


def _json_out_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")


def cmd_plot(a: argparse.Namespace) -> int:
    from mdiexit.plot import plot_timeline

    print(f"wrote {plot_timeline(a.run_dir)}")
    return 0


def _doc(cmd) -> str:
    """A command's description in its help: its docstring."""
    return " ".join(cmd.__doc__.split())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mdiexit",
        description="Early-exit, model-distributed DNN inference across edge devices. "
                    "Train an early-exit model and export it as a model package (manifest + one ONNX file per "
                    "task), then run it on a cluster of processes that offload tasks by queue backlog, exit "
                    "early, and adapt the admitted rate or the exit thresholds. Start with `make demo`, or "
                    "`mdiexit run --cluster examples/edge4.yaml`.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_model_commands(sub)  # train, export, compress, evaluate
    add_ops_commands(sub)  # install-service, doctor, pilot, status
    add_plan_commands(sub, _cluster_arg, _doc)  # plan, cluster generate

    pr = sub.add_parser("profile", help="print a package's exit profile and thresholds")
    pr.add_argument("package", type=Path, nargs="?", default=DEFAULT_PACKAGE)
    pr.set_defaults(func=cmd_profile)

    r = sub.add_parser("run", help="run a whole cluster on this machine and write DIR/summary.json",
                       description=_doc(cmd_run))
    _run_args(r)
    r.add_argument("--dilation", type=float, default=RunDefault("dilation"), metavar="K",
                   help="time dilation: every node's clock runs K times slower than the host's, so every device, "
                        "link, timer and heartbeat does too, and a busy host's own time per message counts K times "
                        "less; options, the live view and the results stay in the cluster's own time, and the run "
                        "takes K times as long (default %(default)s: none)")
    r.set_defaults(func=cmd_run)

    so = sub.add_parser("source", help="run only the sources (workers started elsewhere with `worker`)",
                        description="Run the cluster file's sources here, and no worker: the workers run elsewhere "
                                    "(`mdiexit worker`). A site of several cameras on their own machines runs one "
                                    "`mdiexit source --name CAM` on each; the cluster's first source shuts the "
                                    "workers down at the end, so start it last or give it the longest --duration.")
    _run_args(so)
    so.add_argument("--name", default=None, metavar="SOURCE[,SOURCE...]",
                    help="run only these sources here (default: every source of the file)")
    so.set_defaults(func=cmd_source)

    add_serve_commands(sub, _cluster_arg, gate_args, _security_args)

    w = sub.add_parser("worker", help="run one worker node until the source shuts it down (SIGTERM: leave gracefully)",
                       description="A member of the cluster file (--cluster F --name N; a restarted member rejoins by "
                                   "itself), or a new device joining a running cluster with the source's address "
                                   "alone (--join tcp://SOURCE:PORT --name N --key N.key_secret --source-key "
                                   "source.key); the source must have allowed its key (`mdiexit keys allow`). "
                                   "SIGTERM hands queued work back and leaves; nothing is lost.")
    w.add_argument("--cluster", type=Path, default=None, help="cluster file (a member's way to start)")
    w.add_argument("--name", required=True, help="this node's name (in the cluster file, or the joiner's new name)")
    j = w.add_argument_group("joining a running cluster (--join)")
    j.add_argument("--join", default=None, metavar="tcp://SOURCE:PORT", help="the source's address")
    j.add_argument("--source-key", default=None, help="the source's public key: its .key file or the key text")
    j.add_argument("--host", default="127.0.0.1", help="address the other nodes reach this device at")
    j.add_argument("--port", type=int, default=5600, help="port this device listens on (default 5600)")
    j.add_argument("--tasks", default=None, help="comma-separated tasks this device holds (default: all)")
    j.add_argument("--slowdown", type=float, default=None, help="emulated slowdown of this device (default 1)")
    j.add_argument("--threads", type=int, default=None, help="engine threads (default 1)")
    j.add_argument("--bandwidth-mbps", type=float, default=None, help="this device's egress bandwidth")
    j.add_argument("--latency-ms", type=float, default=None, help="this device's access-link latency")
    j.add_argument("--workdir", type=Path, default=None,
                   help="where the received cluster view and package go (default runs/join-NAME)")
    w.add_argument("--mode", default=None, choices=list(MODES), help="override the cluster file's mode")
    w.add_argument("--dilation", type=float, default=1.0, metavar="K",
                   help="this node's clock runs K times slower (the run's time dilation, `run --dilation`)")
    w.add_argument("--no-pace", action="store_true",
                   help="do not pace the links' bandwidth (the kernel shapes it, as in `run --net namespaces`)")
    w.add_argument("--key", type=Path, default=None,
                   help="this node's secret key file (default: KEYS_DIR/NAME.key_secret)")
    w.add_argument("--metrics-port", type=int, default=None,
                   help="serve this node's Prometheus metrics on this port (default: metrics_port in the file)")
    w.add_argument("--metrics-addr", default=None, help="address the metrics endpoint binds to (default 127.0.0.1)")
    w.add_argument("--host-profile", type=Path, default=None, metavar="FILE",
                   help="this host's task times per batch size, profiled by `mdiexit run` before it started the "
                        "nodes (default: the node profiles itself at start-up)")
    _security_args(w)
    w.set_defaults(func=cmd_worker)

    k = sub.add_parser("keys", help="create one CurveZMQ keypair per node",
                       description="Write DIR/NAME.key (public) and DIR/NAME.key_secret (mode 600) for every node of "
                                   "the cluster file. Nodes then authenticate each other and encrypt every link.")
    k.add_argument("--cluster", type=Path, default=None, help="cluster file whose nodes get keys")
    k.add_argument("--names", type=lambda v: [x for x in v.split(",") if x], default=None,
                   help="comma-separated node names (instead of --cluster)")
    k.add_argument("--out", type=Path, default=None, help="keys folder (created with mode 700)")
    k.add_argument("--force", action="store_true", help="replace existing keys")
    k.set_defaults(func=cmd_keys)
    ksub = k.add_subparsers(dest="keys_action", metavar="ACTION")
    ka = ksub.add_parser("allow", help="allow a new device's key to join the running cluster",
                         description="Write KEYS_DIR/allowed/NAME.key: the source admits a joiner with this key, under "
                                     "this name. Revoke by deleting the file (and restarting the source).")
    ka.add_argument("public_key", help="the joiner's public key (40 Z85 characters) or its .key file")
    ka.add_argument("--name", required=True, help="the name the device joins as")
    ka.add_argument("--keys-dir", type=Path, required=True, help="the source's keys folder")
    ka.set_defaults(func=cmd_keys_allow)
    add_keys_client(ksub)

    pl = sub.add_parser("plot", help="draw DIR/timeline.csv of a run to DIR/timeline.png")
    pl.add_argument("run_dir", type=Path)
    pl.set_defaults(func=cmd_plot)

    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench", required=True, metavar="BENCH")
    add_bench_serve(bsub, _cluster_arg)
    add_sim_commands(sub, bsub, _cluster_arg, _doc)  # simulate, bench simulator
    add_bench_commands(bsub, _cluster_arg, _json_out_arg, _doc)  # engine, runtime, ..., paper
    _name_commands(p)
    return p


def subcommands(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's commands by name (`bench paper`, ...), each with its own parser, in --help's order."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sp in action.choices.values():
                found[sp.prog.removeprefix("mdiexit ")] = sp
                found.update(subcommands(sp))
    return found


def _name_commands(p: argparse.ArgumentParser) -> None:
    """Each command knows its own name, for the line that names a missing extra."""
    for name, sp in subcommands(p).items():
        sp.set_defaults(command_name=name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "device_profile", None) is not None:  # read where the host is profiled, here and in children
        from mdiexit.emulation.device import DEVICE_PROFILE_ENV, NO_PROFILE_FILE

        given = args.device_profile
        os.environ[DEVICE_PROFILE_ENV] = NO_PROFILE_FILE if str(given) == NO_PROFILE_FILE else str(given.resolve())
    try:
        return args.func(args)
    except user_errors() as e:
        print(f"mdiexit: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        line = missing_extra(e, getattr(args, "command_name", args.command))
        if line is None:
            raise
        print(f"mdiexit: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mdiexit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
