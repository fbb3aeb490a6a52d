"""bench network's medians over repeated runs (the run-to-run spread was larger than the variants' difference)."""

from mdiexit.bench.network import median_figures


def run(thr_congested, p95=None):
    return {"before": {"throughput_per_s": 80.0, "p95_ms": 600.0, "accuracy_within_deadline": 0.8},
            "congested": {"throughput_per_s": thr_congested, "p95_ms": p95, "accuracy_within_deadline": 0.3}}


def test_each_figure_is_the_median_over_the_runs_that_gave_it():
    m = median_figures([run(9.7, 800.0), run(47.6), run(4.5, 900.0)])
    assert m["congested"]["throughput_per_s"] == 9.7  # one run's outlier (47.6) does not move it
    assert m["congested"]["p95_ms"] == 850.0  # the run without a p95 is left out
    assert m["before"] == run(0)["before"]
    assert median_figures([run(1.0), run(2.0)])["congested"]["p95_ms"] is None
