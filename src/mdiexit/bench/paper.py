"""`mdiexit bench paper`: the two headline experiments of DESIGN §8 on one emulated cluster, every mode.

Experiment 1 - highest sustainable throughput at target accuracy A (final-exit test accuracy - 1 point).
  Modes without admission control: a rate search (bench.ratesearch states the stability criterion).
  mdi-exit: its own rate adaptation, measured over the steady second half of one run; a fixed-rate
  search of mdi-exit is reported beside it, to show the controller finds the capacity.
Experiment 2 - accuracy within a 1 s deadline at fixed arrival rates, from below to well above mdi's
  capacity. mdi-exit uses threshold adaptation.
Outputs in OUT: paper.json, experiment1.png, experiment2.png, results.md (docs/bench/paper.md quotes it).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from mdiexit import util
from mdiexit.bench.ratesearch import REFINE_STEPS, Criterion, search_rate
from mdiexit.config import load_cluster, write_cluster
from mdiexit.data import load_test_split
from mdiexit.evaluate import all_exit_logits, evaluate_logits
from mdiexit.package import load_package
from mdiexit.policies.modes import MODES
from mdiexit.runtime.launch import RunOptions, run_cluster
from mdiexit.runtime.report import RunResult, write_results

BASELINES = ["mdi", "local", "ddi", "ddi-exit", "mdi-static"]  # mdi first: its capacity seeds the others
NO_COMPRESSION = "mdi-exit (no compression)"


@dataclass
class PaperOptions:
    probe_s: float = 12.0  # seconds of admission per rate-search probe (the first third is warm-up)
    adaptive_s: float = 40.0  # seconds of the rate-adaptation run
    exp2_s: float = 10.0  # seconds per fixed-rate run of experiment 2
    drain_s: float = 5.0  # a run's results must arrive within this after admission stops (else: lost)
    modes: tuple[str, ...] | None = None  # None: every mode, plus mdi-exit without compression
    experiments: tuple[int, ...] = (1, 2)
    mdi_capacity: float | None = None  # experiment 2's unit; None: measured (mdi's rate search)
    rate_factors: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0)  # experiment 2 rates, x mdi's capacity
    deadline_ms: float = 1000.0
    refine_steps: int = REFINE_STEPS  # bisection steps of each rate search
    data_dir: Path | None = None
    keep_runs: Path | None = None  # every run's summary.json, items.csv and timeline.csv, one folder each


def keep(result: RunResult, folder: Path | None, name: str) -> RunResult:
    """Write a run's results to folder/NAME (NAME-2, NAME-3 for a repeated probe), when a folder is given."""
    if folder is not None:
        slug = "-".join("".join(c if c.isalnum() or c == "." else " " for c in name).split())
        n, path = 1, folder / slug
        while path.exists():
            n += 1
            path = folder / f"{slug}-{n}"
        write_results(result, path)
    return result


def say(msg: str) -> None:
    util.say("bench", msg, clock=True)


def test_accuracies(package: Path, data_dir: Path | None) -> tuple[float, float]:
    """Test-split accuracy of the final exit, and at the package's default thresholds."""
    pkg = load_package(package)
    test = load_test_split(pkg, data_dir)
    logits = all_exit_logits(pkg, test.images, threads=2, batch=500, progress=False)
    return float((logits[-1].argmax(1) == test.labels).mean()), evaluate_logits(pkg, logits, test.labels)["accuracy"]


def without_compression(cluster_path: Path, folder: Path) -> Path:
    """A copy of the cluster file with learned compression switched off on every node."""
    return write_cluster(folder / "no-compression.yaml", cluster_path, every_node={"compress": "off"})


def summary_row(s: dict) -> dict:
    return {"throughput_per_s": s["throughput_per_s"], "accuracy": s["accuracy"], "p95_ms": s["latency_ms"]["p95"],
            "bytes_per_item": s["bytes_per_item"], "lost": s["lost"], "exit_fraction": s["exit_fraction"],
            "ideal_throughput_per_s": s.get("ideal_throughput_per_s"), "efficiency": s.get("efficiency")}


def search_mode(path: Path, mode: str, label: str, criterion: Criterion, start: float, probe_s: float,
                drain_s: float, data_dir: Path | None = None, thresholds: tuple[float, ...] | None = None,
                refine_steps: int = REFINE_STEPS, run: Callable[[Path, RunOptions], RunResult] = run_cluster,
                confirm: bool = True, keep_runs: Path | None = None) -> tuple[dict, dict]:
    """Rate search of one mode at fixed thresholds, each probe a run of the cluster (``run``: run_cluster, or the
    simulator's ``simulate``). Returns (result row, search log)."""
    def probe(rate: float) -> dict:
        result = run(path, RunOptions(mode=mode, rate=rate, duration_s=probe_s, warmup_s=min(4.0, probe_s / 3),
                                      live=False, data_dir=data_dir, drain_timeout_s=drain_s, thresholds=thresholds))
        s = keep(result, keep_runs, f"exp1-{label}-{rate:.1f}").summary
        say(f"  {label:>26} @ {rate:7.1f}/s: throughput {s['throughput_per_s']:6.1f}, acc {s['accuracy']:.4f}, "
            f"p95 {s['latency_ms']['p95']:6.0f} ms, lost {s['lost']}")
        return s

    say(f"rate search for {label}")
    res = search_rate(probe, criterion, start, refine_steps=refine_steps, confirm=confirm)
    say(f"  {label}: {res.explain()}")
    log = {"best_rate": res.best_rate, "decided": res.decided,
           "probes": [{"rate": r, "ok": ok, **summary_row(s)} for r, ok, s in res.probes]}
    row = ({"rate": res.best_rate, **summary_row(res.best)} if res.best else
           {"rate": None, "throughput_per_s": 0.0, "accuracy": None, "p95_ms": None, "bytes_per_item": None})
    return row, log


def experiment1(cluster: Path, no_comp: Path, target: float, accuracies: tuple[float, float],
                o: PaperOptions) -> tuple[dict, dict]:
    results, searches = {}, {}
    start = 20.0
    runs = [(m, cluster) for m in BASELINES] + [("mdi-exit", cluster), (NO_COMPRESSION, no_comp)]
    for mode, path in [(m, p) for m, p in runs if o.modes is None or m in o.modes]:
        run_mode = "mdi-exit" if mode == NO_COMPRESSION else mode
        crit = Criterion(target, expected_accuracy=accuracies[1] if MODES[run_mode].exits else accuracies[0])
        results[mode], searches[mode] = search_mode(path, run_mode, mode, crit, start, o.probe_s, o.drain_s,
                                                    o.data_dir, refine_steps=o.refine_steps, keep_runs=o.keep_runs)
        if mode == "mdi":
            start = max(start, results[mode]["rate"] or start)
    if o.modes is not None and "mdi-exit" not in o.modes:
        return results, searches
    say("experiment 1: mdi-exit with rate adaptation")
    half = o.adaptive_s / 2
    s = keep(run_cluster(cluster, RunOptions(mode="mdi-exit", rate=start, duration_s=o.adaptive_s, warmup_s=half,
                                             live=False, admission="rate", target_accuracy=target,
                                             data_dir=o.data_dir)), o.keep_runs, "exp1-rate-adaptation").summary
    results["mdi-exit (rate adaptation)"] = {"rate": None, **summary_row(s), "steady_window_s": half}
    return results, searches


def experiment2(cluster: Path, no_comp: Path, mdi_capacity: float, o: PaperOptions) -> tuple[list[float], dict]:
    rates = [round(mdi_capacity * f, 1) for f in o.rate_factors]
    results: dict[str, list[dict]] = {}
    runs = [(m, cluster, m, "fixed") for m in BASELINES] + [("mdi-exit", cluster, "mdi-exit", "thresholds"),
                                                           (NO_COMPRESSION, no_comp, "mdi-exit", "thresholds")]
    for name, path, mode, admission in [r for r in runs if o.modes is None or r[0] in o.modes]:
        results[name] = []
        for rate in rates:
            result = run_cluster(path, RunOptions(mode=mode, rate=rate, duration_s=o.exp2_s, warmup_s=2.0,
                                                  live=False, admission=admission, deadline_ms=o.deadline_ms,
                                                  data_dir=o.data_dir, drain_timeout_s=o.drain_s))
            s = keep(result, o.keep_runs, f"exp2-{name}-{rate:.1f}").summary
            results[name].append({"rate": rate, "accuracy_within_deadline": s["accuracy_within_deadline"],
                                  "accuracy": s["accuracy"], "throughput_per_s": s["throughput_per_s"],
                                  "p95_ms": s["latency_ms"]["p95"]})
            say(f"experiment 2: {name:>26} @ {rate:7.1f}/s: accuracy within {o.deadline_ms:.0f} ms "
                f"{s['accuracy_within_deadline']:.4f}")
    return rates, results


def bench_paper(cluster: Path, out: Path, o: PaperOptions) -> dict:
    t0 = time.time()
    c = load_cluster(cluster)
    final_acc, default_acc = test_accuracies(c.package, o.data_dir)
    target = final_acc - 0.01
    say(f"final-exit test accuracy {final_acc:.4f}; target accuracy A = {target:.4f}")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        no_comp = without_compression(cluster, Path(d))
        if 1 in o.experiments:
            exp1, searches = experiment1(cluster, no_comp, target, (final_acc, default_acc), o)
        elif o.mdi_capacity is None:  # experiment 2 alone: only mdi's capacity, its unit, is needed
            exp1, searches = experiment1(cluster, no_comp, target, (final_acc, default_acc),
                                         dataclasses.replace(o, modes=("mdi",)))
        else:
            exp1, searches = {}, {}
        mdi_capacity = o.mdi_capacity or (exp1.get("mdi") or {}).get("rate") or 10.0
        rates, exp2 = experiment2(cluster, no_comp, mdi_capacity, o) if 2 in o.experiments else ([], {})
    paper = {"experiment1": {"target_accuracy": target, "final_test_accuracy": final_acc,
                             "default_thresholds_test_accuracy": default_acc, "results": exp1,
                             "criterion": Criterion(target).__dict__, "searches": searches},
             "experiment2": {"deadline_ms": o.deadline_ms, "rates": rates, "mdi_capacity": mdi_capacity,
                             "results": exp2},
             "config": {"cluster": str(cluster), "cluster_file": yaml.safe_load(cluster.read_text()),
                        "options": {k: str(v) for k, v in o.__dict__.items()}, "wall_s": time.time() - t0}}
    (out / "paper.json").write_text(json.dumps(paper, indent=1))
    plot_paper(paper, out)
    (out / "results.md").write_text(markdown_table(paper))
    say(f"done in {(time.time() - t0) / 60:.1f} min: {out / 'paper.json'}")
    print(markdown_table(paper))
    return paper


def markdown_table(p: dict) -> str:
    e1, e2 = p["experiment1"], p["experiment2"]
    lines = [f"**Experiment 1** - highest sustainable throughput at accuracy >= {e1['target_accuracy']:.4f} "
             f"(final-exit test accuracy {e1['final_test_accuracy']:.4f} - 1 point)", "",
             "| mode | throughput (items/s) | accuracy | p95 latency (ms) | bytes/item |", "|---|---|---|---|---|"]
    for mode, r in e1["results"].items():
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        p95 = "-" if r["p95_ms"] is None else f"{r['p95_ms']:.0f}"
        nb = "-" if r["bytes_per_item"] is None else f"{r['bytes_per_item']:.0f}"
        lines.append(f"| {mode} | {r['throughput_per_s']:.1f} | {acc} | {p95} | {nb} |")
    if not e1["results"]:
        lines = []
    if not e2["rates"]:
        return "\n".join(lines) + "\n"
    lines += ["", f"**Experiment 2** - accuracy within {e2['deadline_ms']:.0f} ms at fixed arrival rates "
                  f"(mdi capacity {e2['mdi_capacity']:.1f} items/s)", "",
              "| mode | " + " | ".join(f"{r:g}/s" for r in e2["rates"]) + " |",
              "|---|" + "---|" * len(e2["rates"])]
    for mode, rows in e2["results"].items():
        lines.append(f"| {mode} | " + " | ".join(f"{r['accuracy_within_deadline']:.3f}" for r in rows) + " |")
    return "\n".join(lines) + "\n"


def plot_paper(p: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    e1, e2 = p["experiment1"]["results"], p["experiment2"]
    if e1:
        fig, ax = plt.subplots(figsize=(9, 4))
        names = list(e1)
        ax.bar(range(len(names)), [e1[n]["throughput_per_s"] for n in names], color="tab:blue")
        ax.set_xticks(range(len(names)), names, rotation=25, ha="right")
        ax.set_ylabel("items / s")
        ax.set_title(f"Throughput at accuracy >= {p['experiment1']['target_accuracy']:.4f}")
        fig.tight_layout()
        fig.savefig(out / "experiment1.png", dpi=110)
        plt.close(fig)
    if not e2["rates"]:
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, rows in e2["results"].items():
        ax.plot([r["rate"] for r in rows], [r["accuracy_within_deadline"] for r in rows], marker="o", label=name)
    ax.axvline(e2["mdi_capacity"], color="grey", ls=":", label="mdi capacity")
    ax.set_xlabel("arrival rate (items / s)")
    ax.set_ylabel(f"accuracy within {e2['deadline_ms']:.0f} ms")
    ax.legend(fontsize=8)
    ax.set_title("Accuracy within deadline at fixed rates")
    fig.tight_layout()
    fig.savefig(out / "experiment2.png", dpi=110)
    plt.close(fig)
