"""Plots of run outputs. matplotlib is imported lazily (Agg backend), so importing this module is cheap
and a worker never needs matplotlib."""

from __future__ import annotations

import csv
from pathlib import Path


class PlotError(ValueError):
    """A run folder that cannot be plotted: the message names what is missing."""


TIMELINE_COLUMNS = ("t_s", "rate", "operating_point", "thresholds", "max_backlog_s", "throughput_per_s", "accuracy")


def _read_timeline(path: Path) -> dict[str, list[float]]:
    """Numeric columns of timeline.csv (thresholds, a space-separated string, is skipped). Empty cells: NaN."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in TIMELINE_COLUMNS if c not in header]
        if missing:
            raise PlotError(f"{path}: missing column(s) {', '.join(missing)}; header is {','.join(header)}")
        names = [c for c in header if c != "thresholds"]
        cols: dict[str, list[float]] = {c: [] for c in names}
        for row in reader:
            for c in names:
                v = (row.get(c) or "").strip()
                try:
                    cols[c].append(float(v) if v else float("nan"))
                except ValueError:
                    cols[c].append(float("nan"))
    return cols


def plot_timeline(run_dir: Path) -> Path:
    """Draw ``run_dir/timeline.png`` from ``run_dir/timeline.csv`` and return its path.

    Three stacked panels against time: admitted rate and throughput; the largest backlog (with the target
    when the CSV has a ``target_backlog_s`` column); accuracy, with the operating point on a second axis.
    """
    run_dir = Path(run_dir)
    src = run_dir / "timeline.csv"
    if not src.is_file():
        raise PlotError(f"no timeline at {src}: a run writes timeline.csv into its run folder; "
                                f"pass the folder of a finished run")
    cols = _read_timeline(src)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = cols["t_s"]
    fig, (ax_rate, ax_backlog, ax_acc) = plt.subplots(3, 1, sharex=True, figsize=(9, 8))
    ax_rate.plot(t, cols["rate"], label="admitted rate")
    ax_rate.plot(t, cols["throughput_per_s"], label="throughput")
    ax_rate.set_ylabel("items / s")
    ax_rate.legend(loc="best")

    ax_backlog.plot(t, cols["max_backlog_s"], color="tab:red", label="max backlog")
    if "own_backlog_s" in cols:
        ax_backlog.plot(t, cols["own_backlog_s"], color="tab:orange", alpha=0.7, label="source's own backlog")
    if "target_backlog_s" in cols:
        ax_backlog.plot(t, cols["target_backlog_s"], color="k", linestyle="--", label="target")
    ax_backlog.set_ylabel("backlog (s)")
    ax_backlog.legend(loc="best")

    ax_acc.plot(t, cols["accuracy"], color="tab:green", label="accuracy")
    ax_acc.set_ylabel("accuracy")
    ax_op = ax_acc.twinx()
    ax_op.step(t, cols["operating_point"], where="post", color="tab:purple", alpha=0.6, label="operating point")
    ax_op.set_ylabel("operating point")
    lines = ax_acc.get_lines() + ax_op.get_lines()
    ax_acc.legend(lines, [ln.get_label() for ln in lines], loc="best")
    ax_acc.set_xlabel("time (s)")

    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = run_dir / "timeline.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
