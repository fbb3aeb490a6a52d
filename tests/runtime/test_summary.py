"""The run summary's one definition (runtime.summary): a summary is checked against it, written in plain JSON
types, and every field it may hold is described."""

import json

import msgspec
import numpy as np
import pytest

from mdiexit.runtime.options import RunOptions
from mdiexit.runtime.summary import SUMMARY_FIELDS, RunConfig, RunSummary, run_summary

CONFIG = RunConfig(cluster="c.yaml", package="p", mode="mdi-exit", rate=50.0, duration_s=2.0, warmup_s=0.5,
                   nodes=[{"name": "source"}], net="app", admission="fixed", target_accuracy=None,
                   target_backlog_ms=300.0, deadline_ms=None, max_backlog_ms=600.0, max_wait_ms=250.0,
                   thresholds=[0.9, 0.0], dead_after_ms=1000.0, items="test", data_dir=None, emulation="calibrated")


def figures(**over) -> dict:
    base = dict(offered=10, rejected=0, rejected_reasons={}, admitted=10, completed=10, expired=0, failed=0,
                lost=0, duplicates=0, redispatched=0, redundant_results=0, accuracy=0.9, throughput_per_s=5.0,
                latency_ms={"p50": 1.0, "p95": 2.0, "p99": 3.0}, exit_fraction=[0.5, 0.5], bytes_per_item=10.0,
                per_node={}, bad_messages=0, unknown_results=0, rejected_messages={}, node_visits=10,
                runtime_cpu_us_per_item_hop=None, ideal_throughput_per_s=None,
                ideal_batched_throughput_per_s=None, node_failures=[], recovery_s=None, secure=True, joules=None,
                joules_per_item=None, energy_per_node_j={}, energy_measured_nodes=[], energy_uncounted_nodes=[],
                emulation_warnings=[])
    return {**base, **over}


def test_a_summary_is_plain_json_in_the_documented_order():
    s = run_summary("mdi-exit", figures(node_visits=np.int64(10), throughput_per_s=np.float64(5)), RunOptions(),
                    CONFIG, crashed=[])
    assert type(s["node_visits"]) is int and json.loads(json.dumps(s)) == s
    assert list(s) == [f for f in SUMMARY_FIELDS if f in s]  # the order RunSummary declares
    assert "dilation" not in s and "efficiency" not in s  # unset: left out
    assert s["config"]["dilation"] == 1.0 and s["rate"] == RunOptions().rate
    assert run_summary("mdi-exit", figures(), RunOptions(dilation=2.0), CONFIG, crashed=[])["dilation"] == 2.0


def test_a_summary_refuses_an_undocumented_field_or_a_wrong_type():
    with pytest.raises(msgspec.ValidationError, match="unknown field `throughput`"):
        run_summary("mdi", figures(throughput=5.0), RunOptions(), CONFIG, crashed=[])
    with pytest.raises(msgspec.ValidationError, match="completed"):
        run_summary("mdi", figures(completed=-1), RunOptions(), CONFIG, crashed=[])
    with pytest.raises(msgspec.ValidationError, match="crashed"):
        run_summary("mdi", figures(), RunOptions(), CONFIG)  # a required field missing


def test_every_field_is_described():
    assert set(SUMMARY_FIELDS) == set(RunSummary.__struct_fields__)
    assert all(len(text) > 10 for text in SUMMARY_FIELDS.values())
