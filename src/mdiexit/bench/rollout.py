"""`mdiexit bench rollout`: a roll-out while the site serves (docs/bench/rollout.md). The cluster runs at a fixed
rate; at ``at_s`` the operator rolls out, as `mdiexit rollout` does, first a broken version of the served package
(every exit answers the class after its own: the same shapes and speed), which must be rolled back, then, in a run
of its own, the same model re-released, which must complete; the simulator then plays that same roll-out. A last
run has a device join at 9 s (the package shipped in paced parts). Reported per run: the outcome and its reason,
offered, rejected, lost, the share of items answered by the new version, and per second the share admitted on it,
the results and their p95 latency, and the agreement the gates saw. Writes OUT/rollout.json and OUT/rollout.png."""

from __future__ import annotations

import io
import json
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mdiexit import util
from mdiexit.bench.join import JoinBenchOptions, bench_join
from mdiexit.bench.variants import broken_package, renamed_package
from mdiexit.config import load_cluster
from mdiexit.runtime.launch import run_cluster
from mdiexit.runtime.options import RunOptions
from mdiexit.runtime.ports import on_free_ports

BIN_S = 1.0


@dataclass
class RolloutBenchOptions:
    rate: float = 150.0  # items/s offered
    duration_s: float = 70.0
    at_s: float = 10.0  # when the operator starts the roll-out, from the run's start
    steps: tuple[float, ...] = (0.05, 0.25, 1.0)
    step_s: float = 10.0
    shadow: float = 0.05
    min_agreement: float = 0.95
    last_s: float = 10.0  # "every item admitted in the last this many seconds is on the new version"


def say(msg: str) -> None:
    util.say("bench", msg, clock=True)


def run_rollout(cluster_path: Path, package: Path, o: RolloutBenchOptions) -> dict:
    """One run at ``o.rate`` with a roll-out of ``package`` at ``o.at_s``: its figures."""
    from mdiexit.ops.rollout import find_keys, rollout

    with tempfile.TemporaryDirectory(prefix="mdiexit-rollout-") as d:
        cluster_file = on_free_ports(cluster_path, Path(d) / "cluster.yaml")
        cluster = load_cluster(cluster_file)
        seen: dict = {"progress": []}

        def operator(live) -> None:
            def later() -> None:
                try:
                    time.sleep(o.at_s)
                    seen["began"] = live.source.clock.now()
                    keys = find_keys(cluster, cluster.source, None, None, False)
                    request = {"steps": list(o.steps), "step_s": o.step_s, "shadow": o.shadow,
                               "min_agreement": o.min_agreement, "max_exit_shift": 0.25, "max_p95_ms": None}
                    def heard(p) -> None:
                        seen["progress"].append((live.source.clock.now(), p))
                    seen["outcome"], _ = rollout(cluster.source, package, request, keys, out=io.StringIO(),
                                                 on_progress=heard)
                except Exception as e:  # noqa: BLE001 - reported in the result
                    seen["error"] = f"{type(e).__name__}: {e}"
            threading.Thread(target=later, daemon=True).start()

        res = run_cluster(cluster_file, RunOptions(rate=o.rate, duration_s=o.duration_s, warmup_s=3.0, live=False),
                          on_ready=operator)
    s = res.summary
    record = (s.get("rollouts") or [{}])[0]
    records = list(res.ledger.records.values())
    start = min(r.admitted_at for r in records)
    new = record.get("version")
    end_s = max(r.admitted_at for r in records) - start
    last = [r for r in records if r.admitted_at - start >= end_s - o.last_s]
    bins = int(np.ceil(end_s / BIN_S)) + 1
    per_second = {"share_on_new": [None] * bins, "results_per_s": [0.0] * bins, "p95_ms": [None] * bins}
    admitted = [[] for _ in range(bins)]
    for r in records:
        admitted[int((r.admitted_at - start) / BIN_S)].append(r)
        if r.done_at is not None and (k := int((r.done_at - start) / BIN_S)) < bins:
            per_second["results_per_s"][k] += 1 / BIN_S
    for k, rs in enumerate(admitted):
        if rs:
            per_second["share_on_new"][k] = sum(r.package == new for r in rs) / len(rs)
            lat = [r.done_at - r.admitted_at for r in rs if r.done_at is not None]
            per_second["p95_ms"][k] = float(np.percentile(lat, 95) * 1000) if lat else None
    return {"package": str(package), "outcome": seen.get("outcome"), "error": seen.get("error"),
            "rollout": record, "offered": s["offered"], "rejected": s["rejected"], "lost": s["lost"],
            "failed": s["failed"], "expired": s["expired"], "throughput_per_s": s["throughput_per_s"],
            "answered_by_new": sum(r.package == new and r.done_at is not None for r in records) / len(records),
            "last_s_on_new": sum(r.package == new for r in last) / len(last) if last else None,
            "began_at_s": seen["began"] - start if "began" in seen else None,
            "agreement_seen": [(t - start, p.agreement) for t, p in seen["progress"] if p.agreement is not None],
            "per_second": per_second}


def simulate_rollout(cluster_path: Path, package: Path, o: RolloutBenchOptions) -> dict:
    """The good version's roll-out in the simulator, for its planning figures beside the runtime's."""
    from mdiexit.sim.rollout import RolloutRequest
    from mdiexit.sim.run import simulate

    res = simulate(cluster_path, RunOptions(rate=o.rate, duration_s=o.duration_s, warmup_s=3.0, live=False),
                   rollout=RolloutRequest(package, at_s=o.at_s, steps=o.steps, step_s=o.step_s, shadow=o.shadow,
                                          min_agreement=o.min_agreement))
    s = res.summary
    return {"rollout": s["rollouts"][0], "offered": s["offered"], "rejected": s["rejected"], "lost": s["lost"],
            "throughput_per_s": s["throughput_per_s"]}


def bench_rollout(cluster_path: Path, package: Path, out: Path, o: RolloutBenchOptions) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mdiexit-versions-") as d:
        bad, good = broken_package(package, Path(d) / "bad"), renamed_package(package, Path(d) / "good")
        runs = {}
        for name, version in (("broken", bad), ("good", good)):
            say(f"{cluster_path} at {o.rate:g} items/s for {o.duration_s:g} s; rolling the {name} version out at "
                f"{o.at_s:g} s")
            runs[name] = r = run_rollout(cluster_path, version, o)
            r["package"] = f"the {name} version of {package} (mdiexit.bench.variants)"  # not its temporary folder
            say(f"{name}: {r['outcome']} ({r['rollout'].get('reason') or 'no gate failed'}); rejected "
                f"{r['rejected']} of {r['offered']}, lost {r['lost']}, answered by it "
                f"{100 * r['answered_by_new']:.1f} %")
        say("the same roll-out of the good version, simulated (mdiexit simulate --rollout)")
        simulated = simulate_rollout(cluster_path, good, o)
    say(f"{cluster_path} at {o.rate:g} items/s: a device joins at 9 s")
    join = bench_join(cluster_path, out / "rollout-join.json",
                      JoinBenchOptions(rate=o.rate, duration_s=40.0, at_s=9.0))
    (out / "rollout-join.json").unlink(missing_ok=True)
    report = {"cluster": str(cluster_path), "package": str(package), "options": asdict(o), **runs,
              "simulated": simulated,
              "join": {k: join[k] for k in ("offered", "rejected", "lost", "throughput_per_s", "during")}}
    (out / "rollout.json").write_text(json.dumps(report, indent=1) + "\n")
    _plot(report, out / "rollout.png")
    say(f"wrote {out / 'rollout.json'} and rollout.png")
    return report


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 2, figsize=(12, 7), sharex=True)
    for col, name in enumerate(("broken", "good")):
        run = report[name]
        ps = run["per_second"]
        t = np.arange(len(ps["results_per_s"])) * BIN_S + BIN_S / 2
        share = [np.nan if v is None else v for v in ps["share_on_new"]]
        axes[0, col].plot(t, share, label="admitted on the new version")
        if run["agreement_seen"]:
            at, agreement = zip(*run["agreement_seen"], strict=True)
            axes[0, col].plot(at, agreement, ".", label="shadow agreement")
        axes[0, col].set_ylim(-0.05, 1.05)
        axes[0, col].legend(fontsize=8)
        axes[0, col].set_title(f"{name} version: {run['outcome']}")
        axes[1, col].plot(t, ps["results_per_s"])
        axes[1, col].set_ylabel("results/s")
        axes[2, col].plot(t, [np.nan if v is None else v for v in ps["p95_ms"]])
        axes[2, col].set_ylabel("p95 ms (by admission)")
        axes[2, col].set_xlabel("time since admission started (s)")
        for ax in axes[:, col]:
            if run["began_at_s"] is not None:
                ax.axvline(run["began_at_s"], color="0.6", lw=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
