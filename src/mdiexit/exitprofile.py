"""Exit profile (DESIGN §2) and threshold search. numpy only: read by policies, built by export.

The profile is measured on the held-out validation split. Besides the per-exit marginals that DESIGN
names, it stores the exact Pareto frontier of (expected compute, accuracy) over every threshold vector
on the grid, so that "cheapest thresholds meeting accuracy A" is a binary search at run time.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

DEFAULT_GRID = tuple(round(x, 2) for x in np.arange(0.5, 1.0001, 0.05))  # 0.50 .. 1.00 (1.00 = never exit)


@dataclass(frozen=True)
class OperatingPoint:
    thresholds: tuple[float, ...]  # one per exit, the last is 0.0
    accuracy: float
    compute_fraction: float  # expected MACs per item / MACs of the full model without exits

    def to_json(self) -> dict:
        return {"thresholds": list(self.thresholds), "accuracy": self.accuracy,
                "compute_fraction": self.compute_fraction}


def outcome(conf: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Exit index (0-based) of each item: the first exit k with conf[k] >= thresholds[k]."""
    t = np.asarray(thresholds, dtype=np.float64).copy()
    t[t >= 1.0] = np.inf  # a threshold of 1 disables that exit
    t[-1] = -np.inf
    passes = conf >= t[:, None]
    return passes.argmax(axis=0)


def evaluate(conf: np.ndarray, correct: np.ndarray, cum_macs: np.ndarray, full_macs: float,
             thresholds: np.ndarray) -> OperatingPoint:
    """Accuracy and expected compute of one threshold vector on per-item data of shape (K, N)."""
    e = outcome(conf, thresholds)
    n = np.arange(conf.shape[1])
    return OperatingPoint(tuple(float(x) for x in thresholds), float(correct[e, n].mean()),
                          float(cum_macs[e].mean() / full_macs))


def enumerate_points(conf: np.ndarray, correct: np.ndarray, cum_macs: np.ndarray, full_macs: float,
                     grid: tuple[float, ...] = DEFAULT_GRID) -> list[OperatingPoint]:
    """Every threshold vector on the grid (last exit fixed at 0), evaluated exactly."""
    k, n = conf.shape
    # passes[k][j] = items whose exit-k confidence reaches grid[j] (grid value 1.0 never passes unless conf == 1)
    passes = [[conf[i] >= (g if g < 1.0 else np.inf) for g in grid] for i in range(k - 1)]
    points = []
    for combo in itertools.product(range(len(grid)), repeat=k - 1):
        remaining = np.ones(n, dtype=bool)
        correct_sum, compute_sum = 0, 0.0
        for i, j in enumerate(combo):
            leave = remaining & passes[i][j]
            c = int(leave.sum())
            correct_sum += int(correct[i][leave].sum())
            compute_sum += c * cum_macs[i]
            remaining &= ~leave
        c = int(remaining.sum())
        correct_sum += int(correct[k - 1][remaining].sum())
        compute_sum += c * cum_macs[k - 1]
        thr = tuple(float(grid[j]) for j in combo) + (0.0,)
        points.append(OperatingPoint(thr, correct_sum / n, compute_sum / n / full_macs))
    return points


def pareto_frontier(points: list[OperatingPoint]) -> list[OperatingPoint]:
    """Points that no other point beats on both compute and accuracy, sorted by compute (and accuracy) ascending."""
    best: list[OperatingPoint] = []
    for p in sorted(points, key=lambda p: (p.compute_fraction, -p.accuracy)):
        if not best or p.accuracy > best[-1].accuracy:
            best.append(p)
    return best


@dataclass
class ExitProfile:
    thresholds: list[float]  # the grid
    exit_fraction: list[list[float]]  # [exit][grid]: fraction of all items whose confidence reaches it
    exit_accuracy: list[list[float]]  # [exit][grid]: accuracy of those items
    frontier: list[OperatingPoint]

    def __post_init__(self) -> None:
        self._acc = np.array([p.accuracy for p in self.frontier])
        self._compute = np.array([p.compute_fraction for p in self.frontier])

    @classmethod
    def build(cls, conf: np.ndarray, correct: np.ndarray, task_macs: np.ndarray, full_macs: float,
              grid: tuple[float, ...] = DEFAULT_GRID) -> ExitProfile:
        """conf, correct: (K, N) calibrated confidence and correctness of every exit on validation items."""
        cum = np.cumsum(np.asarray(task_macs, dtype=np.float64))
        frac, acc = [], []
        for k in range(conf.shape[0]):
            f_row, a_row = [], []
            for g in grid:
                m = conf[k] >= g
                f_row.append(float(m.mean()))
                a_row.append(float(correct[k][m].mean()) if m.any() else 1.0)
            frac.append(f_row)
            acc.append(a_row)
        frontier = pareto_frontier(enumerate_points(conf, correct, cum, full_macs, grid))
        return cls(list(grid), frac, acc, frontier)

    # --- queries, O(log n): called by admission control many times a second
    def cheapest_for_accuracy(self, target: float) -> OperatingPoint:
        """Lowest-compute point whose accuracy is >= target (the most accurate one if none is)."""
        i = int(np.searchsorted(self._acc, target, side="left"))
        return self.frontier[min(i, len(self.frontier) - 1)]

    def best_within_compute(self, compute_fraction: float) -> OperatingPoint:
        """Most accurate point whose expected compute is <= compute_fraction (the cheapest if none is)."""
        i = int(np.searchsorted(self._compute, compute_fraction, side="right")) - 1
        return self.frontier[max(i, 0)]

    def confident_fraction(self, exit_index: int, threshold: float) -> float:
        """Fraction of all items whose exit-``exit_index`` (0-based) confidence reaches ``threshold``: the profile's
        marginal, interpolated between grid points (below the grid: its first point, so exits are not overstated)."""
        if threshold >= 1.0:
            return 0.0
        return float(np.interp(threshold, self.thresholds, self.exit_fraction[exit_index]))

    def exit_mix(self, thresholds: tuple[float, ...] | list[float]) -> list[float]:
        """Estimated fraction of items finishing at each exit under ``thresholds``. The profile keeps each exit's
        marginal, not the joint, so this assumes nested confidence: the items confident at an exit include those
        confident at the earlier ones (an easy item is easy everywhere), so 1 - max over exits <= k of their
        confident fractions run past exit k. On the shipped packages it is within 0.01 of the measured mix."""
        survive, mix, done = 1.0, [], 0.0
        for k, t in enumerate(thresholds[:-1]):
            done = max(done, self.confident_fraction(k, t))
            mix.append(survive - min(survive, 1.0 - done))
            survive = min(survive, 1.0 - done)
        return [*mix, survive]

    def to_json(self) -> dict:
        return {"thresholds": self.thresholds,
                "per_exit": [{"exit_fraction": f, "accuracy": a}
                             for f, a in zip(self.exit_fraction, self.exit_accuracy, strict=True)],
                "frontier": [p.to_json() for p in self.frontier]}

    @classmethod
    def from_json(cls, d: dict) -> ExitProfile:
        return cls(list(d["thresholds"]), [e["exit_fraction"] for e in d["per_exit"]],
                   [e["accuracy"] for e in d["per_exit"]],
                   [OperatingPoint(tuple(p["thresholds"]), p["accuracy"], p["compute_fraction"])
                    for p in d["frontier"]])
