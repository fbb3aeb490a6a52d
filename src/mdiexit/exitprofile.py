"""Exit profile (DESIGN §2) and threshold search. numpy only: read by policies, built by export.

The profile is measured on the held-out validation split. Besides the per-exit marginals that DESIGN
names, it stores the exact Pareto frontier of (expected compute, accuracy) over every threshold vector
on the grid, so that "cheapest thresholds meeting accuracy A" is a binary search at run time.
"""

from __future__ import annotations

import itertools
import math
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


# How many standard errors of the validation estimate a target is cleared by (ExitProfile.for_target).
TARGET_Z = 1.0


@dataclass
class ExitProfile:
    thresholds: list[float]  # the grid
    exit_fraction: list[list[float]]  # [exit][grid]: fraction of all items whose confidence reaches it
    exit_accuracy: list[list[float]]  # [exit][grid]: accuracy of those items
    frontier: list[OperatingPoint]
    items: int | None = None  # how many validation items the figures come from (their sampling error)

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
        return cls(list(grid), frac, acc, frontier, items=int(conf.shape[1]))

    # --- queries, O(log n): called by admission control many times a second
    def cheapest_for_accuracy(self, target: float) -> OperatingPoint:
        """Lowest-compute point whose accuracy is >= target (the most accurate one if none is)."""
        i = int(np.searchsorted(self._acc, target, side="left"))
        return self.frontier[min(i, len(self.frontier) - 1)]

    def for_target(self, target: float, z: float = TARGET_Z) -> OperatingPoint:
        """The cheapest point that meets ``target`` on new items, not only on the validation ones: its validation
        accuracy must clear the target by ``z`` standard errors of that estimate (``items`` validation items; none
        known: no margin). A point chosen on the validation split at exactly the target missed it on the test
        split by 0.1-0.3 points on two of the three shipped models."""
        margin = 0.0 if not self.items else z * math.sqrt(max(target * (1.0 - target), 0.0) / self.items)
        return self.cheapest_for_accuracy(target + margin)

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
                "frontier": [p.to_json() for p in self.frontier], "items": self.items}

    @classmethod
    def from_json(cls, d: dict) -> ExitProfile:
        fractions = [e["exit_fraction"] for e in d["per_exit"]]
        return cls(list(d["thresholds"]), fractions, [e["accuracy"] for e in d["per_exit"]],
                   [OperatingPoint(tuple(p["thresholds"]), p["accuracy"], p["compute_fraction"])
                    for p in d["frontier"]], items=d.get("items") or items_behind(fractions))


def items_behind(fractions: list[list[float]], most: int = 200_000) -> int | None:
    """How many items a profile written before it stored the count was measured on: every exit fraction is a count
    over them, so the smallest n that makes them all whole numbers (None if no n up to ``most`` does)."""
    f = np.unique(np.asarray(fractions, dtype=np.float64).ravel())
    f = f[(f > 0) & (f < 1)]
    if not f.size:
        return None
    n = np.arange(1, most + 1, dtype=np.float64)[:, None]
    for start in range(0, most, 20_000):  # in blocks: a (most x fractions) matrix at once would be large
        block = n[start:start + 20_000]
        counts = block * f[None, :]
        whole = (np.abs(counts - np.round(counts)) < 1e-6).all(axis=1)
        if whole.any():
            return int(block[np.argmax(whole), 0])
    return None
