"""Shared fixtures: a tiny early-exit model trained for real on a slice of Fashion-MNIST, and its package.

Everything is written under pytest's temporary folders, never in the tree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mdiexit.data import Dataset, load_fashion_mnist, split_train_val


@pytest.fixture(scope="session")
def fmnist() -> tuple[Dataset, Dataset]:
    return load_fashion_mnist()


@pytest.fixture(scope="session")
def small_splits(fmnist) -> tuple[Dataset, Dataset]:
    """3000 training and 1000 validation items, deterministic."""
    train, _ = fmnist
    tr, val = split_train_val(train.subset(np.arange(4000)), val_fraction=0.25, seed=0)
    return tr, val


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, small_splits) -> Path:
    import torch

    from mdiexit.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny-run")
    cfg = TrainConfig(model="tiny", epochs=4, batch_size=64, lr=0.1, threads=1, seed=0)
    train(cfg, *small_splits, out)
    torch.set_num_threads(1)
    return out / "model.pt"


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory, tiny_checkpoint, small_splits) -> Path:
    from mdiexit.export import export_package

    out = tmp_path_factory.mktemp("pkg") / "tiny"
    return export_package(tiny_checkpoint, out, splits_val=small_splits[1])
