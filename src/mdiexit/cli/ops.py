"""The operating commands: `mdiexit install-service | doctor | status` (mdiexit.ops). `mdiexit.cli` adds them to
its parser; each loads only what it needs when it runs (status loads neither ZeroMQ nor ONNX Runtime)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from mdiexit.cli.common import DEFAULT_CLUSTER, device_profile_arg


def cmd_install_service(a: argparse.Namespace) -> int:
    """Write a systemd unit (restarted whatever ends it, a dynamic user, hardened) and its environment file for
    this device's node, and print the commands that install and start it. Nothing outside --out is touched."""
    from mdiexit.ops.services import Service, write_service

    service = Service(a.role, a.name, cluster=a.cluster, join=a.join, executable=a.executable.resolve())
    unit, env = write_service(service, a.out)
    print(f"wrote {unit} and {env}")
    print("install and start it:")
    for line in service.enable_commands(a.out):
        print(f"  {line}")
    return 0


def _executable() -> Path:
    found = shutil.which("mdiexit")
    return Path(found) if found else Path(sys.argv[0])


def cmd_doctor(a: argparse.Namespace) -> int:
    """Check everything this device needs to take its place in the site, print a checklist with the fix for each
    failure, and exit 1 if any check failed (warnings do not fail)."""
    from mdiexit.ops.doctor import print_checks, run_checks

    checks = run_checks(a.cluster, a.name)
    if a.json:
        print(json.dumps({"node": a.name, "ok": not any(c.outcome == "fail" for c in checks),
                          "checks": [{"name": c.name, "outcome": c.outcome, "found": c.found, "fix": c.fix}
                                     for c in checks]}, indent=1))
    else:
        print_checks(checks)
    return 1 if any(c.outcome == "fail" for c in checks) else 0


def cmd_status(a: argparse.Namespace) -> int:
    """The whole site as its source sees it: every node up or down, its package, backlog, utilisation and tasks
    per second, the links, throughput and accuracy, the last failures and joins. Read from the snapshot the
    running source writes each second on its machine (see mdiexit/ops/status.py); exit 1 when there is none."""
    import msgspec

    from mdiexit.config import load_cluster
    from mdiexit.ops.status import StatusError, read_status, render

    if a.file is not None:
        source, port = "", 0
    else:
        cluster = load_cluster(a.cluster)
        node = next((n for n in cluster.sources if n.name == a.source), None) if a.source else cluster.source
        if node is None:
            print(f"mdiexit: error: --source {a.source!r}: not a source of {a.cluster}; its sources are "
                  f"{', '.join(n.name for n in cluster.sources)}", file=sys.stderr)
            return 2
        source, port = node.name, node.port
    while True:
        try:
            status, _ = read_status(source, port, a.file)
        except StatusError as e:
            print(f"mdiexit: error: {e}", file=sys.stderr)
            return 1
        if a.json:
            print(msgspec.json.encode(status).decode())
            return 0
        if a.watch is None:
            print(render(status))
            return 0
        if sys.stdout.isatty():
            sys.stdout.write("\x1b[2J\x1b[H")
        print(render(status), flush=True)
        time.sleep(a.watch)


def cmd_pilot(a: argparse.Namespace) -> int:
    """Measure the site as it is, in minutes, and report what mdi-exit gains: the source alone, everything sent to
    the fastest device, ddi-exit, mdi-exit at a fixed rate and mdi-exit with rate adaptation, each run in turn at
    the accuracy target; their items per second, accuracy, network bytes per item and per hour, joules per item and
    latency; the planner's what-ifs (one more device of each kind, the uplink halved); and a plain verdict. Writes
    DIR/report.json and DIR/report.html (plots embedded), and each run's results under DIR/runs/."""
    from mdiexit.pilot.run import run_pilot

    run_pilot(a.cluster, a.out, a.minutes, a.target_accuracy)
    return 0


def cmd_rollout(a: argparse.Namespace) -> int:
    """Roll a new package version out on the running site (`mdiexit run` or `mdiexit serve`), in stages, with
    automatic rollback. The source receives the package, loads it, ships it to every node (paced behind the data),
    then runs a growing share of the items (--steps) on it, each step for --step-s, while the gates hold: its labels
    agree with the old version's on a shadow sample (--shadow, --min-agreement), its exit mix stays near the old
    one's (--max-exit-shift), its p95 latency stays under --max-p95-ms, and no item on it fails. A failed gate rolls
    back at once. Exit 0 when the new version serves every item, 1 when it was rolled back (the reason is printed),
    2 when it was refused."""
    from mdiexit.config import load_cluster
    from mdiexit.ops.rollout import RolloutError, check_package, find_keys, rollout

    cluster = load_cluster(a.cluster)
    source = next((n for n in cluster.sources if n.name == a.source), None) if a.source else cluster.source
    if source is None:
        print(f"mdiexit: error: --source {a.source!r}: not a source of {a.cluster}", file=sys.stderr)
        return 2
    steps = sorted(set(a.steps))
    bad = ["--steps: shares in (0, 1], the last 1 (for example 0.05,0.25,1)"] if not steps or steps[-1] != 1.0 or \
        steps[0] <= 0 else []
    bad += [f"{flag}: a share in [0, 1], got {v:g}" for flag, v in (("--shadow", a.shadow), ("--min-agreement",
            a.min_agreement), ("--max-exit-shift", a.max_exit_shift)) if not 0 <= v <= 1]
    bad += [f"{flag}: must be above 0" for flag, v in (("--step-s", a.step_s), ("--max-p95-ms", a.max_p95_ms))
            if v is not None and not v > 0]
    if bad:
        print(f"mdiexit: error: {bad[0]}", file=sys.stderr)
        return 2
    request = {"steps": steps, "step_s": a.step_s, "shadow": a.shadow, "min_agreement": a.min_agreement,
               "max_exit_shift": a.max_exit_shift, "max_p95_ms": a.max_p95_ms}
    try:
        check_package(a.package)
        keys = find_keys(cluster, source, a.key, a.keys_dir, a.insecure)
        outcome, last = rollout(source, a.package, request, keys, a.reply_host)
    except RolloutError as e:
        print(f"mdiexit: error: {e}", file=sys.stderr)
        return 2
    if outcome == "refused":
        print(f"mdiexit: error: the source refused the roll-out: {last.text}", file=sys.stderr)
        return 2
    return 0 if outcome == "completed" else 1


def add_ops_commands(sub) -> None:
    s = sub.add_parser("install-service", help="write a systemd unit for this device's node (worker, source, serve)",
                       description=" ".join(cmd_install_service.__doc__.split()))
    s.add_argument("--role", required=True, choices=["worker", "source", "serve"])
    s.add_argument("--name", required=True, help="this node's name in the cluster file (or a joiner's new name)")
    s.add_argument("--cluster", type=Path, default=None,
                   help="the cluster file (copied to /var/lib/mdiexit with its keys and package)")
    s.add_argument("--join", default=None, metavar="tcp://SOURCE:PORT",
                   help="a new worker that joins by the source's address (no cluster file)")
    s.add_argument("--executable", type=Path, default=_executable(),
                   help="the mdiexit the unit runs (default: this one, %(default)s)")
    s.add_argument("--out", type=Path, default=Path("mdiexit-service"),
                   help="folder to write the unit and environment file into (default %(default)s)")
    s.set_defaults(func=cmd_install_service)

    d = sub.add_parser("doctor", help="check that this device is ready for its place in the site",
                       description=" ".join(cmd_doctor.__doc__.split()))
    d.add_argument("--cluster", type=Path, default=DEFAULT_CLUSTER, help="cluster file (default %(default)s)")
    d.add_argument("--name", default=None, help="this device's node (default: the source)")
    d.add_argument("--json", action="store_true", help="the checks as JSON, for scripts")
    d.set_defaults(func=cmd_doctor)

    pl = sub.add_parser("pilot", help="measure the site in minutes and report what mdi-exit gains (HTML + JSON)",
                        description=" ".join(cmd_pilot.__doc__.split()))
    pl.add_argument("--cluster", type=Path, default=DEFAULT_CLUSTER, help="cluster file (default %(default)s)")
    device_profile_arg(pl)
    pl.add_argument("--minutes", type=float, default=4.0, help="time for all five runs (default 4)")
    pl.add_argument("--target-accuracy", type=float, default=None,
                    help="the accuracy every option must keep (default: the final exit's validation accuracy - 1 "
                         "point)")
    pl.add_argument("--out", type=Path, required=True, help="folder for report.html, report.json and the runs")
    pl.set_defaults(func=cmd_pilot)

    ro = sub.add_parser("rollout", help="roll a new package version out on the running site, with automatic rollback",
                        description=" ".join(cmd_rollout.__doc__.split()))
    ro.add_argument("--cluster", type=Path, default=DEFAULT_CLUSTER, help="cluster file (default %(default)s)")
    ro.add_argument("--package", type=Path, required=True, help="the new package's folder")
    ro.add_argument("--steps", type=lambda v: [float(x) for x in v.split(",") if x], default=[0.05, 0.25, 1.0],
                    help="shares of the items on the new version, step by step (default 0.05,0.25,1)")
    ro.add_argument("--step-s", type=float, default=20.0, help="seconds each step holds (default 20)")
    ro.add_argument("--shadow", type=float, default=0.05,
                    help="share of items that also run on the other version, to compare labels (default 0.05; 0: "
                         "no agreement gate)")
    ro.add_argument("--min-agreement", type=float, default=0.95,
                    help="the least share of shadow-compared labels that must agree (default 0.95)")
    ro.add_argument("--max-exit-shift", type=float, default=0.25,
                    help="the largest total variation between the versions' exit mixes (default 0.25)")
    ro.add_argument("--max-p95-ms", type=float, default=None, help="the new version's p95 latency bound (default none)")
    ro.add_argument("--source", default=None, metavar="NAME", help="the source to roll out at (default: the first)")
    ro.add_argument("--key", type=Path, default=None,
                    help="the operator's secret key (default: the one in KEYS_DIR/operators/, else the source's)")
    ro.add_argument("--keys-dir", type=Path, default=None, help="the site's keys folder (default: the file's)")
    ro.add_argument("--reply-host", default=None,
                    help="this machine's address as the source reaches it (default: found from the route)")
    ro.add_argument("--insecure", action="store_true", help="the site runs with --insecure")
    ro.set_defaults(func=cmd_rollout)

    st = sub.add_parser("status", help="the whole site, as its running source sees it",
                        description=" ".join(cmd_status.__doc__.split()))
    st.add_argument("--cluster", type=Path, default=DEFAULT_CLUSTER, help="cluster file (default %(default)s)")
    st.add_argument("--file", type=Path, default=None, help="read this snapshot file instead (from the source's "
                                                            "runtime folder)")
    st.add_argument("--source", default=None, metavar="NAME",
                    help="the source whose process to read, on a site whose sources run on their own machines "
                         "(`mdiexit source --name`; default: the file's first source)")
    st.add_argument("--json", action="store_true", help="one snapshot as JSON")
    st.add_argument("--watch", type=float, nargs="?", const=1.0, default=None, metavar="SECONDS",
                    help="refresh every SECONDS (default 1) until Ctrl-C")
    st.set_defaults(func=cmd_status)
