"""The service's commands: `mdiexit serve`, `mdiexit classify`, `mdiexit keys client` (DESIGN §10)."""

from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path

from mdiexit.cli.common import RunDefault, finish_run
from mdiexit.cli.model import floats
from mdiexit.policies.modes import ADMISSIONS, MODES


def cmd_serve(a: argparse.Namespace) -> int:
    """Start the cluster (with --no-spawn, the source only) and serve clients on the source's client_port until
    Ctrl-C or SIGTERM. Requests are admitted as admission control allows; one that cannot be taken is rejected at
    once (overloaded, or its deadline would pass), never dropped. On stop, what is in flight is finished (up to
    --drain-timeout s), every request is answered, and DIR/summary.json is written."""
    from mdiexit.runtime.launch import RunOptions, run_cluster
    from mdiexit.util import SignalFlag

    stop = SignalFlag()  # set in the signal handler: no lock taken there
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    given = dict(mode=a.mode, rate=a.rate, live=not a.quiet, admission=a.admission, target_accuracy=a.target_accuracy,
                 target_backlog_ms=a.target_backlog_ms, max_backlog_ms=a.max_backlog_ms, max_wait_ms=a.max_wait_ms,
                 metrics_port=a.metrics_port, metrics_addr=a.metrics_addr, insecure=a.insecure, keys_dir=a.keys_dir,
                 drain_timeout_s=a.drain_timeout, warmup_s=0.0, serve=stop, sink=a.sink, dilation=a.dilation)
    if a.thresholds is not None:
        given["thresholds"] = tuple(floats(a.thresholds, "--thresholds"))
    opts = RunOptions(**{k: v for k, v in given.items() if v is not None and not isinstance(v, RunDefault)})
    return finish_run(run_cluster(a.cluster, opts, spawn=not a.no_spawn), a.out)


def cmd_classify(a: argparse.Namespace) -> int:
    """Classify image files (or every image in the folders given) through a running service: one line per file,
    or with --json one JSON object per line. A request the service refuses as overloaded is sent again with
    jittered backoff while its deadline allows (--no-retry: not). A file that cannot be read or classified gets
    its error on its line; the exit status is 1 if any did."""
    from mdiexit.client import Client, ServiceError
    from mdiexit.inputs import InputError, image_files

    files = image_files(a.paths)
    if not files:
        raise SystemExit("mdiexit: error: no image files in the paths given")
    client = Client.from_cluster(a.cluster, connect=a.connect, key_file=a.key, insecure=a.insecure,
                                 timeout_s=a.timeout, retry_overloaded=not a.no_retry, source=a.source)
    failed = 0
    with client:
        futures = []
        for path in files:
            try:
                futures.append((path, client.submit(path, a.deadline_ms)))
            except InputError as e:
                futures.append((path, e))
        for path, fut in futures:
            row: dict = {"path": str(path)}
            try:
                if isinstance(fut, Exception):
                    raise fut
                p = fut.result()
                row.update(label=p.label, name=p.name, exit=p.exit, confidence=round(p.confidence, 5),
                           latency_ms=round(p.latency_ms, 2), package=p.package)
            except (ServiceError, InputError, TimeoutError) as e:
                failed += 1
                row.update(error=str(e), outcome=getattr(e, "outcome", "error"))
            if a.json:
                print(json.dumps(row), flush=True)
            elif "error" in row:
                print(f"{path}: {row['error']}", flush=True)
            else:
                print(f"{path}: {row['name']} (label {row['label']}, exit {row['exit']}, confidence "
                      f"{row['confidence']:.3f}, {row['latency_ms']:.0f} ms)", flush=True)
    return 1 if failed else 0


def cmd_keys_client(a: argparse.Namespace) -> int:
    from mdiexit.security import create_client_key

    secret = create_client_key(a.keys_dir, a.name, overwrite=a.force)
    print(f"client {a.name}: secret key {secret} (mode 600); the source admits it from now on")
    print(f"give the application that file and the source's public key; e.g. mdiexit classify --key {secret} ...")
    return 0


def cmd_keys_operator(a: argparse.Namespace) -> int:
    from mdiexit.security import OPERATORS, create_keys

    create_keys([a.name], a.keys_dir / OPERATORS, a.force)
    secret = a.keys_dir / OPERATORS / f"{a.name}.key_secret"
    print(f"operator {a.name}: secret key {secret} (mode 600); the source admits it for `mdiexit rollout` from now on")
    return 0


def cmd_bench_serve(a: argparse.Namespace) -> int:
    """Start a service on the cluster, measure its capacity, then offer 0.5x, 1x, 2x and 10x of it from client
    processes: client-side results per second, p50/p95/p99 latency, the rejection rate and the service's CPU per
    request, per load. --dilation K runs the cluster K times slower, so that the host is not the bottleneck, and
    reads every figure back in the cluster's own time."""
    from mdiexit.bench.serve import bench_serve

    bench_serve(a.cluster, a.out, a.duration, tuple(floats(a.loads, "--loads")), a.clients, a.dilation, a.capacity)
    return 0


def add_serve_commands(sub, cluster_arg, gate_args, security_args) -> None:
    s = sub.add_parser("serve", help="serve clients on the source's client_port until Ctrl-C",
                       description=" ".join(cmd_serve.__doc__.split()))
    cluster_arg(s)
    s.add_argument("--no-spawn", action="store_true", help="start the source only (workers run elsewhere)")
    s.add_argument("--mode", default=None, choices=list(MODES), help="override the cluster file's mode")
    s.add_argument("--admission", default="rate", choices=ADMISSIONS,
                   help="rate: admit as fast as the cluster keeps up at --target-accuracy (default); fixed: at most "
                        "--rate per second at fixed thresholds; thresholds: at most --rate, adapting the thresholds")
    s.add_argument("--rate", type=float, default=RunDefault("rate"),
                   help="fixed and thresholds admission: the most admitted per second; rate: the initial rate, "
                        "where it is above 90 %% of the planner's limit for the cluster (default %(default)s)")
    s.add_argument("--target-accuracy", type=float, default=None,
                   help="rate adaptation's accuracy target (default: final-exit validation accuracy - 0.01)")
    s.add_argument("--target-backlog-ms", type=float, default=RunDefault("target_backlog_ms"),
                   help="backlog the controllers aim for (default %(default)s)")
    s.add_argument("--thresholds", default=None, help="fixed admission: comma-separated exit thresholds")
    gate_args(s)
    s.add_argument("--drain-timeout", type=float, default=RunDefault("drain_timeout_s"),
                   help="on stop, seconds to finish what is in flight (default %(default)s)")
    s.add_argument("--quiet", action="store_true", help="no live view")
    s.add_argument("--dilation", type=float, default=RunDefault("dilation"), metavar="K",
                   help="every node's clock runs K times slower (an emulated cluster; figures stay in its own time; "
                        "default %(default)s: none)")
    s.add_argument("--sink", default=None, metavar="SINK",
                   help="also send every request's outcome to jsonl:PATH (a line each) or "
                        "mqtt://[USER@]HOST[:PORT]/TOPIC (QoS 1; mqtts:// for TLS), as for `run`")
    s.add_argument("--out", type=Path, default=Path("runs/serve"), help="folder for summary.json on stop")
    security_args(s)
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser("classify", help="classify image files through a running `mdiexit serve`",
                       description=" ".join(cmd_classify.__doc__.split()))
    c.add_argument("paths", nargs="+", type=Path, help="image files (PNG, JPEG, ...) or folders of them")
    cluster_arg(c)
    c.add_argument("--connect", default=None, metavar="tcp://HOST:PORT",
                   help="the service's address (default: the cluster file's source host and client_port)")
    c.add_argument("--source", default=None, metavar="NAME",
                   help="the source to feed, where the site has several (default: the first with a client_port)")
    c.add_argument("--key", type=Path, default=None,
                   help="this client's secret key (default KEYS_DIR/clients/client.key_secret)")
    c.add_argument("--insecure", action="store_true", help="the service runs with --insecure")
    c.add_argument("--deadline-ms", type=float, default=None, help="each request's deadline")
    c.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a reply (default 30)")
    c.add_argument("--json", action="store_true", help="one JSON object per line")
    c.add_argument("--no-retry", action="store_true",
                   help="report a request the service refuses as overloaded at once, instead of sending it again "
                        "with backoff while its deadline (else --timeout) allows")
    c.set_defaults(func=cmd_classify)


def add_keys_client(ksub) -> None:
    kc = ksub.add_parser("client", help="create a client key the source admits (KEYS_DIR/clients/NAME)",
                         description="Write KEYS_DIR/clients/NAME.key and NAME.key_secret (mode 600). The source's "
                                     "client endpoint admits every key in that folder; revoke one by deleting it "
                                     "(and restarting the service).")
    kc.add_argument("--keys-dir", type=Path, required=True, help="the source's keys folder")
    kc.add_argument("--name", default="client", help="the client's name (default client)")
    kc.add_argument("--force", action="store_true", help="replace an existing key")
    kc.set_defaults(func=cmd_keys_client)
    ko = ksub.add_parser("operator", help="create an operator key (KEYS_DIR/operators/NAME): may run `mdiexit rollout`",
                         description="Write KEYS_DIR/operators/NAME.key and NAME.key_secret (mode 600). The source "
                                     "accepts a roll-out from every key in that folder; revoke one by deleting it.")
    ko.add_argument("--keys-dir", type=Path, required=True, help="the source's keys folder")
    ko.add_argument("--name", default="operator", help="the operator's name (default operator)")
    ko.add_argument("--force", action="store_true", help="replace an existing key")
    ko.set_defaults(func=cmd_keys_operator)


def add_bench_serve(bsub, cluster_arg) -> None:
    b = bsub.add_parser("serve", help="service throughput, latency and rejections from 0.5x to 10x capacity",
                        description=" ".join(cmd_bench_serve.__doc__.split()))
    cluster_arg(b)
    b.add_argument("--duration", type=float, default=20.0, help="seconds per load (default 20)")
    b.add_argument("--loads", default="0.5,1,2,10", help="offered loads as multiples of capacity")
    b.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    b.add_argument("--dilation", type=float, default=1.0, metavar="K",
                   help="run the cluster K times slower (`serve --dilation`) and offer its loads K times slower; "
                        "every figure is read back in its own time (default 1)")
    b.add_argument("--capacity", type=float, default=None, metavar="PER_S",
                   help="the loads' unit in results/s, instead of measuring it (e.g. a dilated run's capacity)")
    b.add_argument("--out", type=Path, default=Path("docs/results/serve.json"))
    b.set_defaults(func=cmd_bench_serve)
