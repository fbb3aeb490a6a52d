"""`mdiexit bench multisource`: several cameras sharing one cluster (examples/cameras3.yaml). Three runs of the
runtime and one of the simulator, on the same file:

- **shares**: every source under rate adaptation (each pushes its endless stream up to its backlog target, so all
  are backlogged) for ``duration_s``: each source's throughput against its weight, Jain's index of throughput /
  weight, and each source's accuracy against its floor;
- **one source**: the same devices with only the first source admitting (the others turned into workers), at the
  same admission: the total the cluster carries without sharing, against the shares run's total;
- **overload**: fixed admission at the package's thresholds, every source offering the same rate (its `fps`), all
  together ``overload`` times the shares run's total, beside one source offering that total alone: the shares come
  from the nodes' fair queueing and each source's gate, not from what they offer;
- **idle**: as shares, for ``idle_to_s`` + ``duration_s`` / 2 seconds, with one source switched off from
  ``idle_from_s`` to ``idle_to_s`` (it takes no arrivals): how long the others take to fill its share, and it to
  take its share back once it returns (each to 90 % of the level it settles at);
- **simulator**: the shares run in virtual time, beside the runtime's.

Writes OUT/multisource.json and OUT/multisource.png.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from mdiexit import util
from mdiexit.config import SOURCE_ONLY, cluster_dict, load_cluster, write_cluster
from mdiexit.runtime.launch import run_cluster
from mdiexit.runtime.options import RunOptions
from mdiexit.runtime.ports import on_free_ports
from mdiexit.runtime.report import RunResult

BIN_S = 1.0  # the idle run's throughput series: results per second, per source
SETTLED = 0.9  # re-shared: a source's throughput within this share of the level it settles at


@dataclass
class MultisourceBenchOptions:
    duration_s: float = 40.0
    rate: float = 300.0  # where rate adaptation starts, the site's total (each source its weight's share)
    idle_source: str | None = None  # default: the second source
    idle_from_s: float = 20.0
    idle_to_s: float = 40.0
    warmup_s: float = 5.0
    overload: float = 2.0  # the overload run offers this many times the shares run's total
    repeats: int = 3  # shares runs: each figure of "shares" is the median over them


def say(msg: str) -> None:
    util.say("bench", msg, clock=True)


def shares(summary: dict) -> dict:
    """Each source's throughput, weight and accuracy against its floor; Jain's index; the spread of
    throughput / weight around its mean."""
    parts = summary["sources"]
    per_weight = {n: p["throughput_per_s"] / p["weight"] for n, p in parts.items()}
    mean = float(np.mean(list(per_weight.values())))
    return {"sources": {n: {"weight": p["weight"], "throughput_per_s": p["throughput_per_s"],
                            "per_weight": per_weight[n], "accuracy": p["accuracy"],
                            "target_accuracy": p["target_accuracy"], "lost": p["lost"],
                            "latency_p95_ms": p["latency_ms"]["p95"]} for n, p in parts.items()},
            "fairness_jain": summary["fairness_jain"],
            "max_deviation_from_mean": max(abs(v / mean - 1) for v in per_weight.values()) if mean else None,
            "throughput_per_s": summary["throughput_per_s"], "lost": summary["lost"]}


def median_run(runs: list[dict]) -> dict:
    """Each figure of the shares runs as its median over them (the runs themselves are kept beside it)."""
    def med(values) -> float | None:
        values = [v for v in values if v is not None]
        return float(np.median(values)) if values else None

    sources = {n: {**p, **{k: med(r["sources"][n][k] for r in runs)
                           for k in ("throughput_per_s", "per_weight", "accuracy", "latency_p95_ms")},
                   "lost": max(r["sources"][n]["lost"] for r in runs)}
               for n, p in runs[0]["sources"].items()}
    return {"sources": sources, **{k: med(r[k] for r in runs)
                                   for k in ("fairness_jain", "max_deviation_from_mean", "throughput_per_s")},
            "lost": max(r["lost"] for r in runs), "runs": len(runs)}


def series(result: RunResult, start: float, length_s: float) -> dict[str, list[float]]:
    """Results per second of each source, from ``start`` (its clock)."""
    bins = int(np.ceil(length_s / BIN_S))
    out = {}
    for name, ledger in (result.ledgers or {}).items():
        done = np.array([r.done_at - start for r in ledger.records.values() if r.done_at is not None and not r.expired])
        counts, _ = np.histogram(done, bins=bins, range=(0, bins * BIN_S))
        out[name] = (counts / BIN_S).tolist()
    return out


def settle_s(values: list[float], begin_s: float, level: float) -> float | None:
    """Seconds from ``begin_s`` until the series is first within SETTLED of ``level`` (it rises to it or falls)."""
    for i in range(int(begin_s / BIN_S), len(values)):
        if abs(values[i] - level) <= (1 - SETTLED) * level:
            return (i + 1) * BIN_S - begin_s
    return None


def reshare(rates: dict[str, list[float]], idle: str, o: MultisourceBenchOptions) -> dict:
    """How long the others took to fill the idle source's share, and it to take its share back."""
    b = BIN_S
    mid = slice(int((o.idle_from_s + o.idle_to_s) / 2 / b), int(o.idle_to_s / b))  # the gap's second half
    end = slice(int((o.idle_to_s + (o.idle_to_s - o.idle_from_s) / 2) / b), None)  # settled after the return
    others = [n for n in rates if n != idle]
    total_others = np.sum([rates[n] for n in others], axis=0).tolist()
    level_gap = float(np.mean(total_others[mid]))
    level_back = float(np.mean(rates[idle][end]))
    return {"idle_source": idle, "idle_from_s": o.idle_from_s, "idle_to_s": o.idle_to_s,
            "others_per_s_before": float(np.mean(total_others[int(o.warmup_s / b):int(o.idle_from_s / b)])),
            "others_per_s_while_idle": level_gap, "idle_source_per_s_after": level_back,
            "reshare_s": settle_s(total_others, o.idle_from_s, level_gap),
            "take_back_s": settle_s(rates[idle], o.idle_to_s, level_back)}


def bench_multisource(cluster_path: Path, out: Path, o: MultisourceBenchOptions) -> dict:
    from mdiexit.sim.run import simulate

    out.mkdir(parents=True, exist_ok=True)
    cluster = load_cluster(cluster_path)
    names = [n.name for n in cluster.sources]
    if len(names) < 2:
        raise SystemExit(f"mdiexit: error: {cluster_path} has {len(names)} source; the bench compares several")
    idle = o.idle_source or names[1]
    if idle not in names:
        raise SystemExit(f"mdiexit: error: --idle-source {idle!r} is not a source of {cluster_path}")
    opts = RunOptions(admission="rate", rate=o.rate, duration_s=o.duration_s, warmup_s=o.warmup_s, live=False)
    with tempfile.TemporaryDirectory(prefix="mdiexit-multisource-") as d:
        work = Path(d)
        path = on_free_ports(cluster_path, work / "cluster.yaml")
        runs = []
        for i in range(o.repeats):
            say(f"shares {i + 1}/{o.repeats}: {cluster_path}, {len(names)} sources under rate adaptation for "
                f"{o.duration_s:g} s")
            runs.append(shares(run_cluster(path, opts).summary))
        report = {"cluster": str(cluster_path), "options": asdict(o), "shares": median_run(runs), "share_runs": runs}
        total = report["shares"]["throughput_per_s"]
        say("one source: the same devices, the others as workers")
        single = run_cluster(_one_source(path, work / "one.yaml"), opts).summary
        report["one_source"] = {"throughput_per_s": single["throughput_per_s"], "accuracy": single["accuracy"],
                                "lost": single["lost"],
                                "shared_over_one": total / single["throughput_per_s"]}
        offered = o.overload * total
        say(f"overload: each source offers {offered / len(names):.0f}/s, {o.overload:g}x the cluster's total")
        fixed = replace(opts, admission="fixed")
        each = {n: offered / len(names) for n in names}
        over = run_cluster(_with_fps(path, work / "over.yaml", each), fixed).summary
        alone = run_cluster(_with_fps(_one_source(path, work / "one.yaml"), work / "over1.yaml", {names[0]: offered}),
                            fixed).summary
        report["overload"] = {**shares(over), "offered_per_s": offered, "one_source_per_s": alone["throughput_per_s"],
                              "shared_over_one": over["throughput_per_s"] / alone["throughput_per_s"],
                              "rejected": {n: p["rejected"] for n, p in over["sources"].items()}}
        length = o.idle_to_s + o.duration_s / 2
        say(f"idle: {idle} switched off from {o.idle_from_s:g} s to {o.idle_to_s:g} s of {length:g} s")
        began: dict[str, float] = {}

        def switch_off(live) -> None:
            def later() -> None:
                began["t"] = live.source.run_start
                time.sleep(max(0.0, began["t"] + o.idle_from_s - live.source.clock.now()))
                live.sources[idle].pause(o.idle_to_s - o.idle_from_s)
            threading.Thread(target=later, daemon=True).start()

        idled = run_cluster(path, replace(opts, duration_s=length), on_ready=switch_off)
    rates = series(idled, began["t"], length)
    report["idle"] = {**reshare(rates, idle, o), "lost": idled.summary["lost"], "per_second": rates}
    say("simulator: the shares run in virtual time")
    sim = simulate(cluster_path, opts)
    report["simulator"] = shares(sim.summary)
    report["simulator"]["over_runtime"] = {
        n: p["throughput_per_s"] / report["shares"]["sources"][n]["throughput_per_s"]
        for n, p in report["simulator"]["sources"].items()}
    (out / "multisource.json").write_text(json.dumps(report, indent=1) + "\n")
    _plot(report, out / "multisource.png")
    s, v = report["shares"], report["overload"]
    say(f"overloaded: Jain {v['fairness_jain']:.3f}, per weight within {100 * v['max_deviation_from_mean']:.1f} %, "
        f"total {v['shared_over_one']:.3f} of one source's")
    say(f"Jain {s['fairness_jain']:.3f}, per weight within {100 * s['max_deviation_from_mean']:.1f} % of the mean; "
        f"total {s['throughput_per_s']:.0f}/s = {report['one_source']['shared_over_one']:.3f} of one source's; "
        f"re-shared in {report['idle']['reshare_s']} s, taken back in {report['idle']['take_back_s']} s; "
        f"simulator/runtime {', '.join(f'{v:.3f}' for v in report['simulator']['over_runtime'].values())}. "
        f"Wrote {out / 'multisource.json'}")
    return report


def _with_fps(path: Path, out: Path, fps: dict[str, float]) -> Path:
    """The cluster file with these sources offering these items a second."""
    return write_cluster(out, path, every_node=lambda n: {"fps": fps[n["name"]]} if n["name"] in fps else {})


def _one_source(path: Path, out: Path) -> Path:
    """The same devices with only the first source: the others hold their devices as workers."""
    d = cluster_dict(load_cluster(path))
    first = next(n["name"] for n in d["nodes"] if n["role"] == "source")
    for n in d["nodes"]:
        if n["role"] == "source" and n["name"] != first:
            n["role"] = "worker"
            for key in SOURCE_ONLY:
                n.pop(key, None)
    return write_cluster(out, d)


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [1, 2.2]})
    names = list(report["shares"]["sources"])
    x = np.arange(len(names))
    total_w = sum(p["weight"] for p in report["shares"]["sources"].values())
    total = sum(p["throughput_per_s"] for p in report["shares"]["sources"].values())
    for i, (key, label) in enumerate((("shares", "runtime"), ("simulator", "simulator"),
                                      ("overload", "overloaded, equal offers"))):
        ax1.bar(x + (i - 1) * 0.27, [report[key]["sources"][n]["throughput_per_s"] for n in names], 0.27, label=label)
    ax1.scatter(x, [total * report["shares"]["sources"][n]["weight"] / total_w for n in names], color="k",
                marker="_", s=400, zorder=3, label="weight's share")
    ax1.set_xticks(x, names)
    ax1.set_ylabel("items/s")
    ax1.set_title(f"shares (Jain {report['shares']['fairness_jain']:.3f})")
    ax1.legend(fontsize=8)
    idle = report["idle"]
    for n, values in idle["per_second"].items():
        ax2.plot(np.arange(len(values)) * BIN_S + BIN_S / 2, values, label=n)
    ax2.axvspan(idle["idle_from_s"], idle["idle_to_s"], color="0.9", zorder=0)
    ax2.set_xlabel("time since admission started (s)")
    ax2.set_ylabel("results per second")
    ax2.set_title(f"{idle['idle_source']} switched off (grey): re-shared in {idle['reshare_s']} s, taken back in "
                  f"{idle['take_back_s']} s")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
