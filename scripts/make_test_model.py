"""Train and export the tiny early-exit model the tests use, into tests/fixtures/tiny/.

    .venv/bin/python scripts/make_test_model.py            # about 30 s on 2 cores

The tests read the committed copy instead of training it in every run; `tests/test_fixture_model.py` (marked
`training`) runs this same recipe in a temporary folder and compares the result with the committed one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from mdiexit.data import Dataset, load_fashion_mnist, split_train_val

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = Path("tests/fixtures/tiny")  # relative to the repository root, so that no machine path lands in the log
# the recipe: 3,000 training and 1,000 validation items of Fashion-MNIST's training split, seed 0
ITEMS, VAL_FRACTION, SEED = 4000, 0.25, 0
TRAIN = dict(model="tiny", epochs=4, batch_size=64, lr=0.1, threads=1, seed=SEED)


def small_splits(data_dir: Path | None = None) -> tuple[Dataset, Dataset]:
    train, _ = load_fashion_mnist(data_dir)
    return split_train_val(train.subset(np.arange(ITEMS)), val_fraction=VAL_FRACTION, seed=SEED)


def make(out: Path, data_dir: Path | None = None) -> Path:
    """Train into OUT/run (model.pt, train.log) and export the package to OUT/package; returns OUT."""
    import torch

    from mdiexit.export import export_package
    from mdiexit.training.train import TrainConfig, train

    torch.set_num_threads(1)
    splits = small_splits(data_dir)
    run = out / "run"
    train(TrainConfig(**TRAIN), *splits, run)
    (run / "checkpoint.pt").unlink(missing_ok=True)  # optimizer state: never committed
    export_package(run / "model.pt", out / "package", splits_val=splits[1])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=FIXTURE, help="where to write (default: %(default)s)")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="Fashion-MNIST idx files (default: the Debian package's)")
    a = ap.parse_args()
    os.chdir(ROOT)
    if a.out.exists():
        shutil.rmtree(a.out)
    make(a.out, a.data_dir)
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
