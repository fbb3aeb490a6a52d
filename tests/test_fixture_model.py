"""The committed tiny model is what its recipe makes: retrain it in a temporary folder and compare."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from mdiexit.engine import OrtEngine
from mdiexit.package import load_package
from mdiexit.training.train import TrainConfig

from .conftest import TINY

pytestmark = pytest.mark.training
ROOT = Path(__file__).resolve().parent.parent


def load_recipe():
    spec = importlib.util.spec_from_file_location("make_test_model", ROOT / "scripts" / "make_test_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_retraining_the_recipe_gives_the_committed_model(tmp_path, fmnist):
    recipe = load_recipe()
    made = recipe.make(tmp_path / "tiny")
    committed, fresh = load_package(TINY / "package"), load_package(made / "package")
    # the same settings (a field added since the fixture was made reads as its default); the input statistics to
    # float precision, since the order their sums are taken in is not part of the recipe
    configs = [asdict(TrainConfig(**p.manifest["training"]["config"])) for p in (committed, fresh)]
    for key in ("mean", "std"):
        assert np.allclose(configs[0].pop(key), configs[1].pop(key), rtol=1e-6)
    assert configs[0] == configs[1]
    val_acc = [[t["val_accuracy"] for t in p.manifest["tasks"]] for p in (committed, fresh)]
    assert np.allclose(val_acc[0], val_acc[1], atol=0.02), val_acc
    # the two packages label the same test items alike at every exit. Bit-exactness is not portable across CPUs, and
    # a CPU's rounding moves an item near a weak exit's boundary: on an AMD EPYC (Zen 4) host the recipe's model
    # agreed with the committed one on 97.4, 94.8, 95.8 and 96.8 % of these items, while the recipe with another
    # seed agrees on 72-88 %; 92 % tells the two apart
    images = fmnist[1].images[:500]
    old, new = OrtEngine(committed, threads=1), OrtEngine(fresh, threads=1)
    x_old = x_new = images
    for t in committed.tasks:
        x_old, logits_old = old.run(t.index, x_old)
        x_new, logits_new = new.run(t.index, x_new)
        agree = float((logits_old.argmax(1) == logits_new.argmax(1)).mean())
        assert agree >= 0.92, f"exit {t.index}: the retrained model agrees on {agree:.1%} of test items"
