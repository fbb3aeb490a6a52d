"""Find the highest sustainable rate of a mode by probing fixed rates (pure search logic; the probe runs
the cluster). A rate is *sustainable* when the run keeps up with it and meets the service targets:

- throughput >= `keep_up` x the admitted rate (no growing queue),
- p95 latency <= `p95_ms`,
- accuracy >= `target_accuracy`,
- no item lost or duplicated.

At fixed thresholds a mode's accuracy does not depend on the rate (the runtime gives every item the label and
exit of a single-process run; tests check it), while a short probe's sample of a few hundred items is noisy
(+-2 points). So `expected_accuracy`, measured once on the whole test split at the mode's thresholds, is
used for the accuracy test when given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

# Bisection steps after the doubling brackets the capacity (see bracket_width). With 2 steps (19 %) two runs of the
# same search could land a whole step apart when the capacity sat near a probed rate.
REFINE_STEPS = 4
# A failing probe that delivers less than this share of what a lower rate already sustained has not saturated the
# cluster: it collapsed (mdi-static at 134.5/s once delivered 14.0 items/s, a step above 123.4/s sustained at 123.6).
# Such a probe is confirmed like a near miss, however clearly it failed.
COLLAPSE = 0.7


def bracket_width(refine_steps: int) -> float:
    """How far apart the last passing and failing rates end, as a fraction: the doubling leaves a factor of 2,
    and each bisection (in log space) halves its exponent, 2^(1/2^k) - 1 (4.4 % at 4 steps)."""
    return 2.0 ** (1.0 / 2 ** refine_steps) - 1.0


@dataclass(frozen=True)
class Criterion:
    target_accuracy: float
    p95_ms: float = 1000.0
    keep_up: float = 0.95
    expected_accuracy: float | None = None  # the mode's test-split accuracy at its fixed thresholds

    def clearly_fails(self, rate: float, s: dict) -> bool:
        """Far from sustainable (less than 70 % of the rate kept up with, items lost, accuracy short): no
        second probe can change that."""
        accuracy = s["accuracy"] if self.expected_accuracy is None else self.expected_accuracy
        return (s["throughput_per_s"] < 0.7 * self.keep_up * rate or s["lost"] > 0 or s["duplicates"] > 0
                or accuracy < self.target_accuracy)

    def ok(self, rate: float, s: dict) -> bool:
        accuracy = s["accuracy"] if self.expected_accuracy is None else self.expected_accuracy
        return (s["throughput_per_s"] >= self.keep_up * rate and s["latency_ms"]["p95"] <= self.p95_ms
                and accuracy >= self.target_accuracy and s["lost"] == 0 and s["duplicates"] == 0)


@dataclass
class SearchResult:
    best_rate: float | None  # highest sustainable rate probed (None: not even the lowest)
    best: dict | None  # that probe's summary
    probes: list[tuple[float, bool, dict]] = field(default_factory=list)
    decided: str = ""  # how the search ended, in words

    def explain(self) -> str:
        steps = ", ".join(f"{r:.1f}{'ok' if ok else 'x'}" for r, ok, _ in self.probes)
        return f"{self.decided} (probes: {steps})"


def search_rate(probe: Callable[[float], dict], criterion: Criterion, start: float, min_rate: float = 1.0,
                max_rate: float = 5000.0, refine_steps: int = REFINE_STEPS, confirm: bool = True) -> SearchResult:
    """Bracket the capacity by doubling (or halving) from `start`, then bisect `refine_steps` times. With
    `confirm`, a probe that narrowly fails, or delivers less than COLLAPSE x what a lower rate sustained, is run
    once more and fails only if it fails again, so that one bad probe (a start-up transient, a hiccup of the host, a
    collapse) cannot turn the search back."""
    res = SearchResult(None, None)
    collapses = 0

    def collapsed(s: dict) -> bool:
        return (res.best is not None and s["lost"] == 0 and s["duplicates"] == 0
                and s["throughput_per_s"] < COLLAPSE * res.best["throughput_per_s"])

    def run(rate: float) -> bool:
        nonlocal collapses
        for attempt in range(2 if confirm else 1):
            s = probe(rate)
            good = criterion.ok(rate, s)
            res.probes.append((rate, good, s))
            if good or (criterion.clearly_fails(rate, s) and not collapsed(s)) or attempt == 1:
                break
            collapses += collapsed(s)
        if good and (res.best_rate is None or rate > res.best_rate):
            res.best_rate, res.best = rate, s
        return good

    lo, hi = None, None
    rate = min(max(start, min_rate), max_rate)
    if run(rate):
        lo = rate
        while hi is None and rate < max_rate:
            rate = min(rate * 2, max_rate)
            if run(rate):
                lo = rate
            else:
                hi = rate
    else:
        hi = rate
        while lo is None and rate > min_rate:
            rate = max(rate / 2, min_rate)
            if run(rate):
                lo = rate
            else:
                hi = rate
    if lo is None or hi is None:
        res.decided = (f"no sustainable rate down to {min_rate:g}/s" if lo is None
                       else f"sustainable up to the search's ceiling {max_rate:g}/s")
        return res
    for _ in range(refine_steps):
        mid = (lo * hi) ** 0.5
        if run(mid):
            lo = mid
        else:
            hi = mid
    again = " (each near miss confirmed by a second probe)" if confirm else ""
    if collapses:
        again += f" ({collapses} collapsed probe{'s' if collapses > 1 else ''} run again)"
    res.decided = f"sustainable at {lo:.1f}/s, not at {hi:.1f}/s{again}"
    return res
