"""`emulation: zero-cost`: a model whose calls return at once, exiting in the package's mix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mdiexit.emulation.zerocost import ZeroCostCodec, ZeroCostEngine, exit_chances
from mdiexit.package import CodeOutput, CompressionSpec, load_package
from mdiexit.policies.exit import exit_decision

PACKAGE = Path(__file__).resolve().parents[2] / "models" / "mobilenetv2-fmnist"


@pytest.fixture(scope="module")
def pkg():
    return load_package(PACKAGE)


def test_the_chances_at_each_task_make_the_packages_exit_mix(pkg):
    mix = pkg.profile.exit_mix(pkg.default_thresholds)
    left, made = 1.0, []
    for chance in exit_chances(pkg):
        made.append(left * chance)
        left -= left * chance
    assert made == pytest.approx(mix) and left == pytest.approx(0.0)


def test_items_run_through_the_engine_exit_in_the_mix_and_carry_features_of_each_tasks_shape(pkg):
    engine = ZeroCostEngine(pkg, "w1")
    n = 8000
    x = np.zeros((n, *pkg.input_shape), np.uint8)
    exits = np.zeros(pkg.num_tasks)
    for task in range(1, pkg.num_tasks + 1):
        features, logits = engine.run(task, x)
        assert logits.shape == (len(x), len(pkg.classes))
        last = task == pkg.num_tasks
        out = [exit_decision(row, pkg.task(task).temperature, pkg.default_thresholds[task - 1], last)[0]
               for row in logits]
        exits[task - 1] = sum(out)
        if last:
            assert features is None
        else:
            assert features.shape == (len(x), *pkg.task(task).features_shape) and features.dtype == np.float32
            x = features[~np.array(out)]
    assert exits.sum() == n  # every item exits once
    assert exits / n == pytest.approx(pkg.profile.exit_mix(pkg.default_thresholds), abs=0.02)


def test_a_nodes_draws_are_repeatable_and_its_own():
    pkg = load_package(PACKAGE)
    x = np.zeros((64, *pkg.input_shape), np.uint8)
    a, b, c = (ZeroCostEngine(pkg, name).run(1, x)[1] for name in ("w1", "w1", "w2"))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_a_codec_answers_with_arrays_of_the_codes_and_the_features_shapes():
    spec = CompressionSpec(after_task=1, ratio=4.0, encoder=Path("enc.onnx"), decoder=Path("dec.onnx"),
                           features_shape=(8, 4, 4), outputs=(CodeOutput("q", (2, 4, 4), "uint8"),
                                                              CodeOutput("scale", (1,), "float32")),
                           accuracy_cost=0.0)
    codec = ZeroCostCodec(spec)
    code = codec.encode(np.ones((3, 8, 4, 4), np.float32))
    assert {k: (v.shape, v.dtype) for k, v in code.items()} == {"q": ((3, 2, 4, 4), np.uint8),
                                                                "scale": ((3, 1), np.float32)}
    assert codec.decode(code).shape == (3, 8, 4, 4)


def test_an_exiting_item_is_certain_and_a_going_one_is_not_at_any_sane_temperature(pkg):
    engine = ZeroCostEngine(pkg, "w1")
    engine.chances = [1.0] * pkg.num_tasks  # every item exits at its first task
    _, certain = engine.run(1, np.zeros((4, *pkg.input_shape), np.uint8))
    engine.chances = [0.0] * pkg.num_tasks
    _, flat = engine.run(1, np.zeros((4, *pkg.input_shape), np.uint8))
    for temperature in (0.5, 1.0, 100.0):
        assert all(exit_decision(row, temperature, 0.999, False)[0] for row in certain)
        assert not any(exit_decision(row, temperature, 0.2, False)[0] for row in flat)
