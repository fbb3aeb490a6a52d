"""The model commands of the command line: `mdiexit train | export | compress | evaluate` (torch, except
evaluate). `mdiexit.cli` adds them to its parser; heavy imports happen when a command runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mdiexit.data import DATASETS

DEFAULT_PACKAGE = Path("models/mobilenetv2-fmnist")


class UsageError(Exception):
    """A command-line value that cannot work. The message names the option and the fix."""


def floats(text: str | None, option: str) -> list[float] | None:
    """Comma-separated numbers, or None when the option was not given."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise UsageError(f"{option}: expected numbers separated by commas (e.g. 0.485,0.456,0.406), got {text!r}")
    return values


def items_arg(text: str) -> str | int:
    from mdiexit.data import parse_items

    return parse_items(text)


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="fashion-mnist", choices=DATASETS,
                   help="dataset format (default: fashion-mnist)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="dataset folder (default: $MDIEXIT_DATA or /usr/share/datasets/fashion-mnist); for "
                        "`folder`: ROOT/CLASS/IMAGE, or images directly in ROOT (unlabelled)")
    p.add_argument("--image-size", type=int, default=None,
                   help="resize images to SIZE x SIZE (folders: as they are decoded; others: upscale)")
    p.add_argument("--channels", type=int, default=None, help="1 (grey) or 3 (RGB; grey images are repeated)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out part of train for calibration")


def cmd_train(a: argparse.Namespace) -> int:
    """Train backbone and exits jointly, or only the exits on a frozen backbone (--freeze-backbone). The model is a
    built-in name or your own MODULE:FUNCTION, where FUNCTION(input_shape, num_classes) returns
    build_early_exit(...) (or a (blocks, final_head) pair); the checkpoint records it, so that export, compress and
    evaluate rebuild it. --exit-targets teacher trains the exits on the final head's predictions: no labels needed.
    Resumes from OUT/checkpoint.pt when present."""
    from mdiexit.data import load, read_classes
    from mdiexit.training.train import TrainConfig, train

    mean, std = floats(a.mean, "--mean"), floats(a.std, "--std")
    if (mean is None) != (std is None):
        raise UsageError("give --mean and --std together (per-channel statistics of 0..1 pixels)")
    if a.num_classes is not None and a.num_classes < 2:
        raise UsageError(f"--num-classes {a.num_classes}: a classifier needs at least 2 classes")
    mode = "exits-only" if a.freeze_backbone else a.mode
    classes = read_classes(a.classes) if a.classes else None
    cfg = TrainConfig(model=a.model, dataset=a.dataset, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
                      mode=mode, seed=a.seed, threads=a.threads, val_fraction=a.val_fraction,
                      image_size=a.image_size, channels=a.channels, init_from=a.init_from,
                      augment=not a.no_augment, mean=mean or [], std=std or [], exit_targets=a.exit_targets,
                      num_classes=a.num_classes, classes_file=str(a.classes) if a.classes else None,
                      data_dir=str(a.data_dir.resolve()) if a.data_dir else None)
    if a.weight_decay is not None:
        cfg.weight_decay = a.weight_decay
    splits = load(a.dataset, a.data_dir, a.val_fraction, a.seed, a.image_size, a.channels, classes, lazy=True)
    print(f"training {a.model} on {a.dataset}: {len(splits.train)} train / {len(splits.val)} val images, "
          f"log in {a.out / 'train.log'}", file=sys.stderr)
    train(cfg, splits.train, splits.val, a.out, resume=not a.no_resume, stop_after=a.stop_after,
          device=a.device)
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    """Fit a temperature per exit and the exit profile on the validation split, pick default thresholds, write
    manifest.json + ONNX task files, and check ONNX Runtime against torch. Refuses to write a package that
    disagrees."""
    from mdiexit.export import export_package

    export_package(a.checkpoint, a.out, data_dir=a.data_dir, name=a.name, max_accuracy_loss=a.max_loss,
                   compute_budget=a.compute_budget)
    return 0


def cmd_compress(a: argparse.Namespace) -> int:
    """For every task boundary and ratio, train a small conv autoencoder with an 8-bit code on the frozen model;
    keep per boundary the strongest ratio whose validation accuracy loss at the default thresholds is within
    --budget, export it as encK.onnx / decK.onnx, check ONNX Runtime against torch, and record it in the
    manifest. Writes DIR/compression_report.json and DIR/compress.log."""
    from mdiexit.training.compress import CompressConfig, compress_package

    ratios = floats(a.ratios, "--ratios")
    if min(ratios) <= 1:
        raise UsageError(f"--ratios: expected numbers > 1 separated by commas, got {a.ratios!r}")
    cfg = CompressConfig(ratios=tuple(ratios), budget=a.budget, epochs=a.epochs, max_train_items=a.max_train_items,
                         seed=a.seed, threads=a.threads)
    compress_package(a.package, a.checkpoint, cfg, data_dir=a.data_dir)
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    """Run every exit of the package on the test split (or --items all|N of --data-dir) with ONNX Runtime; print
    per-exit accuracy and the accuracy and compute of the thresholds."""
    from mdiexit.evaluate import evaluate_package

    evaluate_package(a.package, data_dir=a.data_dir, threads=a.threads, out=a.out, compressed=a.compressed,
                     items=items_arg(a.items), thresholds=floats(a.thresholds, "--thresholds"))
    return 0


def _doc(cmd) -> str:
    return " ".join(cmd.__doc__.split())


def add_model_commands(sub) -> None:
    """train, export, compress and evaluate, on the parser's sub-commands."""
    t = sub.add_parser("train", help="train an early-exit model (torch)", description=_doc(cmd_train))
    t.add_argument("--model", default="mobilenetv2", metavar="NAME|MODULE:FUNCTION",
                   help="mobilenetv2, resnet50, tiny, or your own MODULE:FUNCTION (or FILE.py:FUNCTION) where "
                        "FUNCTION(input_shape, num_classes) returns build_early_exit(...) (default mobilenetv2)")
    _data_args(t)
    t.add_argument("--num-classes", type=int, default=None,
                   help="outputs of the model (default: the dataset's classes); keeps a pretrained head whatever "
                        "the folders hold")
    t.add_argument("--classes", type=Path, default=None, metavar="FILE",
                   help="class names, one a line, in the order of the model's outputs (default: the dataset's); a "
                        "folder's sub-folders are labelled by their name's line")
    t.add_argument("--mean", default=None, help="per-channel mean of 0..1 pixels, comma-separated (default: the "
                                                "model's own, else computed from the data)")
    t.add_argument("--std", default=None, help="per-channel std of 0..1 pixels, comma-separated")
    t.add_argument("--exit-targets", default="labels", choices=["labels", "teacher"],
                   help="what the exits learn: the labels, or the final head's predictions (teacher: "
                        "self-distillation, no labels needed; with --freeze-backbone)")
    t.add_argument("--freeze-backbone", action="store_true",
                   help="train the exits only, on the frozen backbone and final head (= --mode exits-only)")
    t.add_argument("--epochs", type=int, default=8)
    t.add_argument("--batch-size", type=int, default=None,
                   help="items per optimizer step (default 128, lowered so that an epoch takes at least 20 steps)")
    t.add_argument("--lr", type=float, default=0.1, help="peak learning rate of the one-cycle schedule")
    t.add_argument("--weight-decay", type=float, default=None,
                   help="L2 weight decay of SGD (default: TrainConfig.weight_decay in mdiexit/training/train.py)")
    t.add_argument("--mode", default="joint", choices=["joint", "exits-only"])
    t.add_argument("--init-from", default=None, help="checkpoint whose weights start the run (for exits-only)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    t.add_argument("--device", default="cpu", metavar="cpu|cuda",
                   help="where to train (default cpu); cuda needs a CUDA build of torch and a GPU, and the "
                        "checkpoints it writes load on a CPU")
    t.add_argument("--no-augment", action="store_true", help="no random crop / flip")
    t.add_argument("--no-resume", action="store_true", help="ignore OUT/checkpoint.pt")
    t.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="stop after N epochs in this call (the next call resumes)")
    t.add_argument("--out", type=Path, required=True, help="run folder: checkpoint.pt, model.pt, train.log")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("export", help="calibrate, profile and write a model package", description=_doc(cmd_export))
    e.add_argument("checkpoint", type=Path, help="model.pt written by `mdiexit train`")
    e.add_argument("--out", type=Path, required=True, help="package folder to write")
    e.add_argument("--name", default=None, help="package name (default: MODEL-ee-DATASET)")
    e.add_argument("--data-dir", type=Path, default=None)
    e.add_argument("--max-loss", type=float, default=0.005,
                   help="default thresholds: largest validation accuracy loss vs the final exit (default 0.005)")
    e.add_argument("--compute-budget", type=float, default=None,
                   help="instead of --max-loss: most accurate thresholds within this fraction of full compute")
    e.set_defaults(func=cmd_export)

    c = sub.add_parser("compress", help="train and add feature autoencoders at the task boundaries (torch)",
                       description=_doc(cmd_compress))
    c.add_argument("--package", type=Path, required=True, help="package folder written by `mdiexit export`")
    c.add_argument("--checkpoint", type=Path, required=True, help="model.pt the package was exported from")
    c.add_argument("--ratios", default="4,8,16", help="compression ratios vs float32 to try (default 4,8,16)")
    c.add_argument("--budget", type=float, default=0.005,
                   help="largest validation accuracy loss per boundary, as a fraction (default 0.005)")
    c.add_argument("--epochs", type=int, default=3)
    c.add_argument("--data-dir", type=Path, default=None)
    c.add_argument("--max-train-items", type=int, default=None, help="train on at most this many items")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    c.set_defaults(func=cmd_compress)

    ev = sub.add_parser("evaluate", help="evaluate a package on the test split with ONNX Runtime",
                        description=_doc(cmd_evaluate))
    ev.add_argument("package", type=Path, nargs="?", default=DEFAULT_PACKAGE)
    ev.add_argument("--data-dir", type=Path, default=None)
    ev.add_argument("--items", default="test", help="test (the package's test split), all (every item of "
                                                    "--data-dir, in order) or N (the first N) (default test)")
    ev.add_argument("--thresholds", default=None, help="comma-separated exit thresholds (default: the package's)")
    ev.add_argument("--threads", type=int, default=2)
    ev.add_argument("--out", type=Path, default=None, help="also write the evaluation as JSON here")
    ev.add_argument("--compressed", action="store_true",
                    help="pass features through the package's encoder/decoder at every boundary that has one")
    ev.set_defaults(func=cmd_evaluate)
