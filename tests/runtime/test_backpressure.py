"""`mdiexit run` goes through the service's admission gate: overload is refused at once, deadlines expire items
in the queues, and every offered item has exactly one outcome."""

import pytest

from mdiexit.runtime.launch import RunOptions, run_cluster
from tests.runtime.conftest import write_cluster

pytestmark = pytest.mark.cluster


def test_overload_with_deadlines_loses_nothing(tmp_path, tiny_package):
    # slow devices offered far more than they take, so that most is refused whatever the host's speed
    path = write_cluster(tmp_path / "c.yaml", tiny_package, [1200, 600, 600], mode="mdi")
    s = run_cluster(path, RunOptions(rate=2000, duration_s=6, warmup_s=1, live=False, deadline_ms=300,
                                     drain_timeout_s=60)).summary
    assert s["lost"] == 0 and s["failed"] == 0 and s["duplicates"] == 0
    assert s["rejected"] > s["offered"] / 2  # far more offered than the cluster can take: refused at once
    assert s["offered"] == s["completed"] + s["rejected"] + s["expired"]
    assert s["latency_ms"]["p99"] <= 300  # nothing is answered after its deadline
    assert 0 <= s["accuracy_within_deadline"] <= s["completed"] / s["offered"]
