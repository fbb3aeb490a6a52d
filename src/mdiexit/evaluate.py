"""Evaluate a model package on the test split (or any image folder) with ONNX Runtime: per-exit accuracy and
the accuracy and expected compute of its default thresholds (the figures quoted in docs/guide/models.md).

A package whose exits were trained without labels (`profile_targets: teacher`), and unlabelled items, are
scored against the final exit's predictions: the figures are then agreement with the final exit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from mdiexit.calibration import confidence
from mdiexit.data import LazyImages, load_items
from mdiexit.engine import OrtEngine
from mdiexit.exitprofile import outcome
from mdiexit.package import Package, PackageError, load_package
from mdiexit.util import progress_steps


def all_exit_logits(pkg: Package, images: np.ndarray | LazyImages, threads: int = 2, batch: int = 128,
                    progress: bool = True, compressed: bool = False) -> np.ndarray:
    """Run every task on every item; return logits of shape (K, N, classes). With `compressed`, features
    pass through the package's encoder and decoder at every boundary that has them (as over the network).
    Batch by batch: the peak memory is one batch's, whatever the number of items (and lazy images are decoded
    one batch at a time)."""
    engine = OrtEngine(pkg, threads=threads, arena=False)
    out = [[] for _ in pkg.tasks]
    for i in progress_steps(range(0, len(images), batch), "evaluate", "batches", enabled=progress):
        x = np.ascontiguousarray(images[i:i + batch])
        for t in pkg.tasks:
            x, logits = engine.run(t.index, x)
            out[t.index - 1].append(logits)
            codec = engine.codec(t.index) if compressed and x is not None else None
            if codec is not None:
                x = codec.decode(codec.encode(x))
    return np.stack([np.concatenate(o) for o in out])


def predicted_labels(pkg: Package, logits: np.ndarray, thresholds: list[float] | None = None) -> np.ndarray:
    """(labels, exits) each item gets at these thresholds (what a cluster run must return, item for item)."""
    thresholds = thresholds or pkg.default_thresholds
    conf = np.stack([confidence(lg, t.temperature) for lg, t in zip(logits, pkg.tasks, strict=True)])
    exits = outcome(conf, np.array(thresholds))
    return logits.argmax(2)[exits, np.arange(logits.shape[1])], exits + 1


def evaluate_logits(pkg: Package, logits: np.ndarray, labels: np.ndarray,
                    thresholds: list[float] | None = None) -> dict:
    thresholds = thresholds or pkg.default_thresholds
    conf = np.stack([confidence(lg, t.temperature) for lg, t in zip(logits, pkg.tasks, strict=True)])
    correct = logits.argmax(2) == labels[None]
    cum = np.cumsum([t.macs for t in pkg.tasks]).astype(np.float64)
    exits = outcome(conf, np.array(thresholds))
    accuracy = float(correct[exits, np.arange(len(labels))].mean())
    return {
        "items": int(len(labels)),
        "per_exit_accuracy": [float(c.mean()) for c in correct],
        "thresholds": list(thresholds),
        "accuracy": accuracy,
        "final_exit_accuracy": float(correct[-1].mean()),
        "accuracy_loss_points": 100 * (float(correct[-1].mean()) - accuracy),
        "compute_fraction": float(cum[exits].mean() / pkg.full_macs),
        "exit_fraction": [float((exits == k).mean()) for k in range(len(pkg.tasks))],
    }


def evaluate_package(package: Path, data_dir: Path | None = None, threads: int = 2, out: Path | None = None,
                     compressed: bool = False, items: str | int = "test",
                     thresholds: list[float] | None = None) -> dict:
    """`items`: test (the package's test split), all or N (see `mdiexit.data.load_items`)."""
    pkg = load_package(package, check_onnx=True)
    if thresholds is not None and len(thresholds) != pkg.num_tasks:
        raise PackageError(f"--thresholds: {len(thresholds)} values for {pkg.num_tasks} exits; give {pkg.num_tasks}")
    test = load_items(pkg, items, data_dir, lazy=True)
    logits = all_exit_logits(pkg, test.images, threads, compressed=compressed)
    teacher = pkg.manifest.get("profile_targets") == "teacher" or not test.labelled
    truth = logits[-1].argmax(1) if teacher else test.labels
    split = "test" if items == "test" else f"{len(test)} items of {data_dir or 'the test file'}"
    result = {"package": pkg.name, "split": split, "compressed": compressed,
              "scored_against": "final exit" if teacher else "labels",
              **evaluate_logits(pkg, logits, truth, thresholds)}
    print_evaluation(result)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
    return result


def print_evaluation(r: dict, file=sys.stdout) -> None:
    how = ", features through the learned codecs at every boundary" if r.get("compressed") else ""
    split = f"the {r['split']} split" if r["split"] == "test" else r["split"]
    print(f"{r['package']} on {split} ({r['items']} items{how})", file=file)
    if r.get("scored_against") == "final exit":
        print("  no labels: accuracy here is agreement with the final exit's prediction", file=file)
    for k, a in enumerate(r["per_exit_accuracy"], start=1):
        print(f"  exit {k}: accuracy {a:.4f}", file=file)
    print(f"  thresholds {r['thresholds']}: accuracy {r['accuracy']:.4f} "
          f"({points_vs_final(r['accuracy_loss_points'])}), "
          f"compute {r['compute_fraction']:.1%} of the full model, "
          f"exit fractions {' '.join(f'{f:.3f}' for f in r['exit_fraction'])}", file=file)


def points_vs_final(loss_points: float) -> str:
    """'1.49 points below the final exit', 'level with ...' or '0.20 points above ...' (an exit can beat it)."""
    if round(loss_points, 2) == 0:
        return "level with the final exit"
    return f"{abs(loss_points):.2f} points {'below' if loss_points > 0 else 'above'} the final exit"
