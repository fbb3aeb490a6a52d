"""bench network's medians over repeated runs (the run-to-run spread was larger than the variants' difference)."""

from pathlib import Path

import pytest

from mdiexit.bench.network import limit_at, median_figures, phase_figures
from mdiexit.emulation.device import DEVICE_PROFILE_ENV
from mdiexit.runtime.ledger import Record


def run(thr_congested, p95=None):
    return {"before": {"throughput_per_s": 80.0, "p95_ms": 600.0, "accuracy_within_deadline": 0.8},
            "congested": {"throughput_per_s": thr_congested, "p95_ms": p95, "accuracy_within_deadline": 0.3}}


def test_each_figure_is_the_median_over_the_runs_that_gave_it():
    m = median_figures([run(9.7, 800.0), run(47.6), run(4.5, 900.0)])
    assert m["congested"]["throughput_per_s"] == 9.7  # one run's outlier (47.6) does not move it
    assert m["congested"]["p95_ms"] == 850.0  # the run without a p95 is left out
    assert m["before"] == run(0)["before"]
    assert median_figures([run(1.0), run(2.0)])["congested"]["p95_ms"] is None


def test_the_phase_limit_follows_the_source_uplink_and_the_exit_mix_of_the_results(tmp_path, monkeypatch):
    monkeypatch.setenv(DEVICE_PROFILE_ENV, "docs/results/device-profile.json")  # pinned: no profiling here
    fast, slow = (limit_at(Path("examples/camera4.yaml"), tmp_path, mbps) for mbps in (20.0, 0.5))
    deep = [0.0, 0.0, 0.0, 1.0]  # every item to the last exit: task 1's features must leave the source
    assert slow(deep) < 0.5 * fast(deep)
    assert slow([1.0, 0.0, 0.0, 0.0]) > 2 * slow(deep)  # early exits need no uplink

    def record(exit_, t):
        return Record(admitted_at=t, truth=1, label=1, exit=exit_, done_at=t + 0.1)

    seen = []
    figures = phase_figures([record(1, 1.0), record(1, 1.5), record(4, 2.0), record(2, 5.0)], 0.0,
                            {"a": (0.0, 3.0), "b": (3.0, 6.0)}, 1.0,
                            {"a": lambda mix: seen.append(mix) or 7.0, "b": lambda mix: seen.append(mix) or 9.0}, 4)
    assert seen == [pytest.approx([2 / 3, 0, 0, 1 / 3]), [0.0, 1.0, 0.0, 0.0]]
    assert (figures["a"]["limit_per_s"], figures["b"]["limit_per_s"]) == (7.0, 9.0)
