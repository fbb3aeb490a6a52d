"""Export a trained early-exit model as a model package (DESIGN §5).

Steps: predict every exit on the validation split, fit a temperature per exit, build the exit profile,
pick default thresholds, write one ONNX file per task, and check ONNX Runtime against torch on real
inputs. The package is written to a temporary folder and moved into place only if it agrees.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mdiexit.calibration import confidence, expected_calibration_error, fit_temperature
from mdiexit.data import Dataset, load
from mdiexit.engine import OrtEngine
from mdiexit.exitprofile import ExitProfile, OperatingPoint
from mdiexit.models import EarlyExitModel
from mdiexit.package import FORMAT, PackageError, load_package
from mdiexit.training.train import TrainConfig, load_trained, predict_logits
from mdiexit.util import say

PARITY_ATOL = 1e-3  # largest allowed |ORT - torch| on logits, relative to the logits' scale
PARITY_ITEMS = 256


@dataclass
class Calibration:
    temperatures: list[float]
    ece_before: list[float]
    ece_after: list[float]


def calibrate(logits: np.ndarray, labels: np.ndarray) -> Calibration:
    """Fit one temperature per exit; logits is (K, N, classes)."""
    temps = [fit_temperature(lg, labels) for lg in logits]
    before = [expected_calibration_error(lg, labels) for lg in logits]
    after = [expected_calibration_error(lg, labels, t) for lg, t in zip(logits, temps, strict=True)]
    return Calibration(temps, before, after)


def confidences(logits: np.ndarray, labels: np.ndarray, temps: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """(K, N) calibrated confidence and correctness of every exit."""
    conf = np.stack([confidence(lg, t) for lg, t in zip(logits, temps, strict=True)])
    return conf, logits.argmax(2) == labels[None]


def choose_default(profile: ExitProfile, final_accuracy: float, max_loss: float,
                   compute_budget: float | None) -> OperatingPoint:
    if compute_budget is not None:
        return profile.best_within_compute(compute_budget)
    return profile.cheapest_for_accuracy(final_accuracy - max_loss)


def export_onnx(model: EarlyExitModel, out: Path) -> list[str]:
    """One ONNX file per task: input `x` (dynamic batch), outputs `features` and `logits`."""
    model.eval()
    files = []
    x = torch.zeros((2, *model.input_shape), dtype=torch.uint8)
    for k, task in enumerate(model.tasks, start=1):
        last = k == model.num_exits
        mod = _LogitsOnly(task).eval() if last else task  # eval: export restores the wrapper's mode
        names = ["logits"] if last else ["features", "logits"]
        name = f"task{k}.onnx"
        torch.onnx.export(mod, (x,), str(out / name), input_names=["x"], output_names=names, dynamo=False,
                          dynamic_axes={n: {0: "batch"} for n in ["x", *names]}, opset_version=17)
        files.append(name)
        with torch.no_grad():
            x, _ = task(x)
    model.eval()
    return files


class _LogitsOnly(torch.nn.Module):
    def __init__(self, task: torch.nn.Module):
        super().__init__()
        self.task = task

    def forward(self, x):
        return self.task(x)[1]


def check_parity(model: EarlyExitModel, pkg_dir: Path, images: np.ndarray) -> list[float]:
    """Run every task with ORT and torch on the same real inputs; return the max logit error per task."""
    pkg = load_package(pkg_dir, check_onnx=True)
    engine = OrtEngine(pkg, threads=2)
    x_ort = images
    x_t = torch.from_numpy(images)
    errors = []
    with torch.no_grad():
        for k, task in enumerate(model.tasks, start=1):
            f_t, lg_t = task(x_t)
            f_o, lg_o = engine.run(k, x_ort)
            scale = max(1.0, float(lg_t.abs().max()))
            err = float(np.abs(lg_o - lg_t.numpy()).max()) / scale
            errors.append(err)
            agree = float((lg_o.argmax(1) == lg_t.numpy().argmax(1)).mean())
            if err > PARITY_ATOL or agree < 0.99:
                raise PackageError(f"task {k}: ONNX Runtime disagrees with torch (max relative logit error "
                                   f"{err:.2e}, label agreement {agree:.3f}); package not written")
            x_t, x_ort = f_t, (f_o if f_o is not None else None)
    return errors


def build_manifest(model: EarlyExitModel, cfg: TrainConfig, classes: list[str], files: list[str],
                   calib: Calibration, profile: ExitProfile, default: OperatingPoint, name: str,
                   val_accuracy: list[float], parity: list[float] | None = None) -> dict:
    infos = model.task_info()
    full_macs = sum(i.segment_macs for i in infos) + infos[-1].head_macs
    return {
        "format": FORMAT,
        "name": name,
        "arch": model.arch,
        "classes": classes,
        "input": {"shape": list(model.input_shape), "dtype": "uint8"},
        "tasks": [{"index": i.index, "file": f, "macs": i.segment_macs + i.head_macs,
                   "segment_macs": i.segment_macs, "head_macs": i.head_macs,
                   "input_shape": list(i.input_shape), "features_shape": list(i.features_shape),
                   "feature_bytes": i.feature_bytes, "temperature": t, "ece_before": eb, "ece_after": ea,
                   "val_accuracy": va}
                  for i, f, t, eb, ea, va in zip(infos, files, calib.temperatures, calib.ece_before,
                                                 calib.ece_after, val_accuracy, strict=True)],
        "full_macs": full_macs,
        "exit_profile": profile.to_json(),
        "default_thresholds": list(default.thresholds),
        "default_operating_point": {"val_accuracy": default.accuracy, "compute_fraction": default.compute_fraction},
        "compression": [],
        "training": {"config": cfg.__dict__, "parity_max_rel_error": parity},
    }


def export_package(checkpoint: Path, out: Path, data_dir: Path | None = None, name: str | None = None,
                   max_accuracy_loss: float = 0.005, compute_budget: float | None = None,
                   splits_val: Dataset | None = None) -> Path:
    model, cfg, classes = load_trained(checkpoint)
    val = splits_val or load(cfg.dataset, data_dir, cfg.val_fraction, cfg.seed, cfg.image_size, cfg.channels).val
    _say(f"predicting {len(val)} validation items with every exit")
    logits = predict_logits(model, val.images)
    calib = calibrate(logits, val.labels)
    conf, correct = confidences(logits, val.labels, calib.temperatures)
    infos = model.task_info()
    full_macs = sum(i.segment_macs for i in infos) + infos[-1].head_macs
    task_macs = np.array([i.segment_macs + i.head_macs for i in infos], dtype=np.float64)
    _say("building the exit profile")
    profile = ExitProfile.build(conf, correct, task_macs, full_macs)
    val_acc = [float(c.mean()) for c in correct]
    default = choose_default(profile, val_acc[-1], max_accuracy_loss, compute_budget)
    name = name or f"{cfg.model}-ee-{cfg.dataset}"
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent if out.parent.exists() else None))
    try:
        files = export_onnx(model, tmp)
        manifest = build_manifest(model, cfg, classes, files, calib, profile, default, name, val_acc)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        _say("checking ONNX Runtime against torch")
        parity = check_parity(model, tmp, val.images[:PARITY_ITEMS])
        manifest["training"]["parity_max_rel_error"] = parity
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if out.exists():
            shutil.rmtree(out)
        shutil.move(str(tmp), str(out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _say(f"wrote {out}: default thresholds {list(default.thresholds)} -> val accuracy {default.accuracy:.4f} "
         f"(final exit {val_acc[-1]:.4f}) at {default.compute_fraction:.1%} of full compute")
    return out


def _say(msg: str) -> None:
    say("export", msg)
