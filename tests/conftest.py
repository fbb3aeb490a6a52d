"""Shared fixtures: a tiny early-exit model trained for real on a slice of Fashion-MNIST, and its package.

The model is committed in tests/fixtures/tiny/ (made by scripts/make_test_model.py; test_fixture_model.py retrains it
and compares). Everything a test writes goes under pytest's temporary folders, never in the tree.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mdiexit.data import Dataset, load_fashion_mnist, split_train_val

TINY = Path(__file__).parent / "fixtures" / "tiny"


@pytest.fixture(scope="session", autouse=True)
def profile_cache(tmp_path_factory) -> Path:
    """The host profile every command keeps (emulation.device.profile_file) goes to a folder of this session's, not
    the user's cache: the tests share it, as commands on one host do."""
    import os

    folder = tmp_path_factory.mktemp("cache")
    os.environ["XDG_CACHE_HOME"] = str(folder)
    return folder


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path, monkeypatch) -> Path:
    """Each test's sources write their status snapshots (ops/status.py) to a folder of its own: a snapshot another
    test left, of a source that had the same name and port and another package, once made `mdiexit doctor` fail."""
    folder = tmp_path / "run"
    monkeypatch.setenv("MDIEXIT_RUNTIME_DIR", str(folder))
    return folder


@pytest.fixture(scope="session")
def fmnist() -> tuple[Dataset, Dataset]:
    return load_fashion_mnist()


@pytest.fixture(scope="session")
def small_splits(fmnist) -> tuple[Dataset, Dataset]:
    """3000 training and 1000 validation items, deterministic: the split the tiny model was trained on."""
    train, _ = fmnist
    tr, val = split_train_val(train.subset(np.arange(4000)), val_fraction=0.25, seed=0)
    return tr, val


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """The committed tiny model's model.pt (scripts/make_test_model.py), copied so that no test writes in the tree."""
    out = tmp_path_factory.mktemp("tiny-run")
    shutil.copy(TINY / "run" / "model.pt", out / "model.pt")
    return out / "model.pt"


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory) -> Path:
    """The committed tiny model package (manifest + ONNX), copied to a temporary folder."""
    out = tmp_path_factory.mktemp("pkg") / "tiny"
    shutil.copytree(TINY / "package", out)
    return out
