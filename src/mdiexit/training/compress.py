"""`mdiexit compress`: train and select the feature autoencoders (`mdiexit.models.autoencoder`) of a model
package's task boundaries, and record them in its manifest (DESIGN §5 `compression`).

For every boundary k = 1..K-1 and every requested ratio r, train an autoencoder on the frozen backbone with a
reconstruction + distillation loss. Per boundary, keep the strongest ratio whose end-to-end validation accuracy
at the package's default thresholds drops by at most `budget`, then back off until all boundaries compressed at
once fit the budget too (`select`). Export the picks as `enc{k}.onnx` (`x` -> uint8 `code`) and `dec{k}.onnx`
(`code` -> `features`), checked against torch (`mdiexit.export`), and record them in the manifest. Writes
`compression_report.json` and logs to `compress.log` in the package; training resumes from `compress_state.pt`.

    result = compress_package(Path("models/mobilenetv2-fmnist"), Path("runs/mnv2/model.pt"), ratios=(4, 8, 16))
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mdiexit.data import Dataset
from mdiexit.evaluate import evaluate_logits
from mdiexit.export import (
    PARITY_ITEMS,
    check_codec_parity,
    export_codec,
    manifest_entry,
    time_codec,
    write_compression,
)
from mdiexit.models import EarlyExitModel
from mdiexit.models.autoencoder import MAX_MAC_FRACTION, Autoencoder, build_autoencoder
from mdiexit.package import PackageError, load_package
from mdiexit.training.inference import predict_logits
from mdiexit.training.train import TrainConfig, batch_of, data_splits, load_trained, seed_everything
from mdiexit.util import logging_to, say, third_party_warnings_summarised

log = logging.getLogger("mdiexit.compress")

STATE_FILE = "compress_state.pt"  # training checkpoint (resumed when the settings match)
EPS = 1e-12  # accuracy costs are fractions of a finite split: this much over the budget is within it


@dataclass(frozen=True)
class CompressConfig:
    """The settings of one `mdiexit compress` run (saved in its training state)."""

    ratios: tuple[float, ...] = (4.0, 8.0, 16.0)  # compression ratios vs float32 to try, per boundary
    budget: float = 0.005  # largest validation accuracy loss, as a fraction, per boundary and all together
    epochs: int = 3
    max_train_items: int | None = None  # train on a random subset of at most this many items
    seed: int = 0
    threads: int = 1  # torch intra-op threads
    batch_size: int = 128
    lr: float = 5e-3
    distill_weight: float = 1.0  # loss = MSE of standardised features + distill_weight * KL of later exits
    progress: bool = True  # progress bars

    def __post_init__(self) -> None:
        ratios = tuple(sorted({float(r) for r in self.ratios}))
        if not ratios or min(ratios) <= 1:
            raise ValueError(f"ratios must be > 1, got {self.ratios}")
        object.__setattr__(self, "ratios", ratios)


@dataclass
class CompressResult:
    package: Path
    chosen: dict[int, Autoencoder]  # after_task -> the autoencoder written to the package (torch, eval mode)
    report: dict


# ------------------------------------------------------------------ training

def _frozen(model: EarlyExitModel) -> EarlyExitModel:
    model.eval()
    model.requires_grad_(False)
    return model


@torch.no_grad()
def _features_and_logits(model: EarlyExitModel, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    feats, logits = [], []
    for task in model.tasks:
        x, lg = task(x)
        feats.append(x)
        logits.append(lg)
    return feats, logits


def _run_from(model: EarlyExitModel, k: int, feats: torch.Tensor) -> list[torch.Tensor]:
    """Logits of exits k+1..K when tasks k+1..K run on `feats` (k is 1-based)."""
    out = []
    for task in model.tasks[k:]:
        feats, lg = task(feats)
        out.append(lg)
    return out


@torch.no_grad()
def _feature_stats(model: EarlyExitModel, images: np.ndarray, n: int = 1024) -> list[tuple]:
    """Per boundary: per-channel mean, std, whether every feature is >= 0 (then the decoder ends in ReLU), and the
    features of the first n items (for the PCA start)."""
    feats, _ = _features_and_logits(model, torch.from_numpy(images[:n]))
    return [(f.mean((0, 2, 3)), f.std((0, 2, 3)).clamp_min(1e-3), bool(f.min() >= 0), f) for f in feats[:-1]]


def distill_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Mean KL(teacher || student) over the downstream exits, temperature 1."""
    kl = [F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), log_target=True, reduction="batchmean")
          for s, t in zip(student, teacher, strict=True)]
    return sum(kl) / len(kl)


def train_autoencoders(model: EarlyExitModel, aes: list[Autoencoder], train_set: Dataset, cfg: CompressConfig,
                       state_path: Path | None = None) -> None:
    """Train every autoencoder together (the frozen backbone runs once per batch). Loss per autoencoder:
    MSE of standardised features + distill_weight * KL of the downstream exits. Checkpoints after every
    epoch to `state_path`, with the config, and resumes from it when the training settings match."""
    epochs, seed, batch_size, lr, distill_weight = cfg.epochs, cfg.seed, cfg.batch_size, cfg.lr, cfg.distill_weight
    _frozen(model)
    params = [p for ae in aes for p in ae.parameters()]
    steps_per_epoch = math.ceil(len(train_set) / batch_size)
    total = max(1, epochs * steps_per_epoch)
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    gen = torch.Generator().manual_seed(seed)
    settings = {"epochs": epochs, "seed": seed, "batch_size": batch_size, "lr": lr, "items": len(train_set),
                "distill_weight": distill_weight,
                "codecs": [(ae.after_task, ae.requested_ratio, asdict(ae.shape)) for ae in aes]}
    start = 0
    if state_path is not None and state_path.exists():
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        if st.get("settings") == settings:
            for ae, sd in zip(aes, st["aes"], strict=True):
                ae.load_state_dict(sd)
            start = st["epoch"]
            if start < epochs:  # a finished state keeps no optimizer: nothing is left to train
                opt.load_state_dict(st["opt"])
                sched.load_state_dict(st["sched"])
                gen.set_state(st["gen"])
            log.info("resumed autoencoder training from %s at epoch %d", state_path, start)
        else:
            log.info("%s was written with other settings; training from scratch", state_path)
    for epoch in range(start, epochs):
        t0 = time.time()
        for ae in aes:
            ae.train()
        order = torch.randperm(len(train_set), generator=gen)
        run = np.zeros((len(aes), 2))
        seen = 0
        bar = tqdm(range(steps_per_epoch), desc=f"compress epoch {epoch + 1}/{epochs}", unit="step", leave=False,
                   disable=not cfg.progress)
        for step in bar:
            idx = order[step * batch_size:(step + 1) * batch_size]
            feats, teacher = _features_and_logits(model, batch_of(train_set.images, idx))  # distils: no labels
            opt.zero_grad(set_to_none=True)
            for i, ae in enumerate(aes):
                k = ae.after_task
                f = feats[k - 1]
                rec = ae(f)
                mse = F.mse_loss(rec * ae.encoder.scale, f * ae.encoder.scale)
                kl = distill_loss(_run_from(model, k, rec), teacher[k:])
                (mse + distill_weight * kl).backward()
                run[i] += (mse.item() * len(idx), kl.item() * len(idx))
            opt.step()
            sched.step()
            seen += len(idx)
            if step % 10 == 0:
                bar.set_postfix_str(f"mse {run[:, 0].mean() / seen:.4f} kl {run[:, 1].mean() / seen:.4f}")
        log.info("epoch %d/%d %.0fs %s", epoch + 1, epochs, time.time() - t0,
                 " ".join(f"[k{ae.after_task} r{ae.requested_ratio:g} mse {m / seen:.4f} kl {kl / seen:.4f}]"
                          for ae, (m, kl) in zip(aes, run, strict=True)))
        if state_path is not None:
            state = {"settings": settings, "config": asdict(cfg), "aes": [ae.state_dict() for ae in aes],
                     "epoch": epoch + 1}
            if epoch + 1 < epochs:  # mid-way: what resuming needs; once done, the autoencoders alone
                state.update(opt=opt.state_dict(), sched=sched.state_dict(), gen=gen.get_state())
            torch.save(state, state_path)
    for ae in aes:
        ae.eval()


@torch.no_grad()
def compressed_logits(model: EarlyExitModel, images: np.ndarray, codecs: dict[int, Autoencoder],
                      batch_size: int = 512) -> np.ndarray:
    """Logits of every exit (K, N, classes) with the features after each boundary in `codecs` replaced by their
    encode -> 8-bit -> decode round trip."""
    _frozen(model)
    outs = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i:i + batch_size])
        logits = []
        for k, task in enumerate(model.tasks, start=1):
            x, lg = task(x)
            logits.append(lg)
            if k in codecs:
                x = codecs[k].eval()(x)
        outs.append(torch.stack(logits).numpy())
    return np.concatenate(outs, axis=1)


@torch.no_grad()
def boundary_logits(model: EarlyExitModel, images: np.ndarray, base: np.ndarray, ae: Autoencoder,
                    batch_size: int = 512) -> np.ndarray:
    """Like `compressed_logits` with one codec, reusing the uncompressed logits of exits 1..k."""
    k = ae.after_task
    out = base.copy()
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i:i + batch_size])
        for task in model.tasks[:k]:
            x, _ = task(x)
        lg = _run_from(model, k, ae.eval()(x))
        out[k:, i:i + batch_size] = torch.stack(lg).numpy()
    return out


# ------------------------------------------------------------------ selection

@dataclass(frozen=True)
class Candidate:
    """One trained autoencoder, as selection sees it: its boundary, achieved ratio and accuracy cost alone."""

    after_task: int
    ratio: float
    cost: float


def select(cands: list[Candidate], budget: float, joint_accuracy: Callable[[dict[int, int]], float],
           base_accuracy: float) -> tuple[dict[int, int], float]:
    """Pick one candidate per boundary: alone, the strongest ratio within the budget (else the weakest). Costs
    measured one boundary at a time add up, so while every boundary compressed at once (``joint_accuracy`` of the
    picks, as boundary -> index into ``cands``) costs more than the budget, the boundary whose pick costs most
    steps down to its next weaker ratio. Returns the picks and their joint accuracy."""
    picks = {}
    for k in sorted({c.after_task for c in cands}):
        mine = [i for i, c in enumerate(cands) if c.after_task == k]
        ok = [i for i in mine if cands[i].cost <= budget + EPS]
        picks[k] = max(ok, key=lambda i: cands[i].ratio) if ok else min(mine, key=lambda i: cands[i].ratio)
    while True:
        acc = joint_accuracy(picks)
        if base_accuracy - acc <= budget + EPS:
            return picks, acc
        steps = []
        for k, i in picks.items():
            weaker = [j for j, c in enumerate(cands) if c.after_task == k and c.ratio < cands[i].ratio]
            if weaker:
                steps.append((cands[i].cost, k, max(weaker, key=lambda j: cands[j].ratio)))
        if not steps:
            return picks, acc
        _, k, j = max(steps, key=lambda s: (s[0], s[1]))
        log.info("all boundaries cost %+.4f > budget: boundary %d backs off to %.2fx", base_accuracy - acc, k,
                 cands[j].ratio)
        picks[k] = j


# ------------------------------------------------------------------ the command

def compress_package(package: Path, checkpoint: Path, cfg: CompressConfig | None = None, *,
                     data_dir: Path | None = None, train_set: Dataset | None = None, val_set: Dataset | None = None,
                     model: EarlyExitModel | None = None, **options) -> CompressResult:
    """Train, select, export and record one autoencoder per task boundary of the package at `package`.

    ``options`` are CompressConfig fields, over ``cfg``. train_set / val_set default to the training config's
    splits (as `mdiexit export` uses them). ``model``: the object the checkpoint was trained as (when its spec
    cannot rebuild it).
    """
    cfg = dataclasses.replace(cfg or CompressConfig(), **options)
    package = Path(package)
    pkg = load_package(package, check_onnx=True)
    with logging_to(log, package / "compress.log"), third_party_warnings_summarised("compress", log):
        return _compress(pkg, package, checkpoint, cfg, data_dir, train_set, val_set, model)


def _compress(pkg, package: Path, checkpoint: Path, cfg: CompressConfig, data_dir: Path | None,
              train_set: Dataset | None, val_set: Dataset | None, given: EarlyExitModel | None) -> CompressResult:
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    model, train_cfg, classes = load_trained(checkpoint, given)
    model = _frozen(model)
    infos = model.task_info()
    if [i.features_shape for i in infos] != [t.features_shape for t in pkg.tasks]:
        raise PackageError(f"{checkpoint} does not match {package}: its feature shapes "
                           f"{[list(i.features_shape) for i in infos]} differ from the manifest's")
    if pkg.num_tasks < 2:
        raise PackageError(f"{package}: one task has no boundary to compress")
    train_set, val_set = _splits(train_cfg, cfg, data_dir, train_set, val_set, classes)
    if pkg.manifest.get("profile_targets") == "teacher":  # measured as the package's profile was
        val_set = Dataset(val_set.images, predict_logits(model, val_set.images)[-1].argmax(1), val_set.classes)
    log.info("compress %s with %s: ratios %s, budget %.4f, %d epochs on %d train items, %d val items", package,
             checkpoint, list(cfg.ratios), cfg.budget, cfg.epochs, len(train_set), len(val_set))

    aes = _build(model, pkg, train_set, cfg.ratios)
    _say(f"training {len(aes)} autoencoders ({pkg.num_tasks - 1} boundaries x {len(cfg.ratios)} ratios) for "
         f"{cfg.epochs} epochs on {len(train_set)} items; log in {package / 'compress.log'}")
    train_autoencoders(model, aes, train_set, cfg, package / STATE_FILE)

    _say(f"selecting on {len(val_set)} validation items at thresholds {pkg.default_thresholds}")
    base_acc = evaluate_logits(pkg, compressed_logits(model, val_set.images, {}), val_set.labels)["accuracy"]
    rows = _measure(model, pkg, val_set, aes, base_acc)
    chosen, entries, all_acc = _export_chosen(model, pkg, package, val_set, aes, rows, base_acc, cfg.budget)
    write_compression(package, entries)
    log.info("wrote %d compression entries to %s", len(entries), package / "manifest.json")

    report = {"package": pkg.name, "checkpoint": str(checkpoint), "budget": cfg.budget, "ratios": list(cfg.ratios),
              "epochs": cfg.epochs, "train_items": len(train_set), "val_items": len(val_set), "seed": cfg.seed,
              "thresholds": pkg.default_thresholds, "uncompressed_val_accuracy": base_acc, "boundaries": rows,
              "all_boundaries": {"ratios": {str(k): round(a.shape.ratio, 4) for k, a in chosen.items()},
                                 "uncompressed_val_accuracy": base_acc, "compressed_val_accuracy": all_acc,
                                 "accuracy_cost": round(base_acc - all_acc, 6)}}
    (package / "compression_report.json").write_text(json.dumps(report, indent=1))
    print_report(report)
    log.info("all boundaries compressed: val accuracy %.4f vs %.4f uncompressed", all_acc, base_acc)
    return CompressResult(package, chosen, report)


def _splits(train_cfg: TrainConfig, cfg: CompressConfig, data_dir: Path | None, train_set: Dataset | None,
            val_set: Dataset | None, classes: list[str]) -> tuple[Dataset, Dataset]:
    if train_set is None or val_set is None:
        splits = data_splits(train_cfg, data_dir, classes)
        train_set, val_set = train_set or splits.train, val_set or splits.val
    if cfg.max_train_items is not None and cfg.max_train_items < len(train_set):
        idx = np.sort(np.random.default_rng(cfg.seed).permutation(len(train_set))[:cfg.max_train_items])
        train_set = train_set.subset(idx)
    return train_set, val_set


def _build(model: EarlyExitModel, pkg, train_set: Dataset, ratios: tuple[float, ...]) -> list[Autoencoder]:
    """One autoencoder per boundary and ratio, started from the features' statistics."""
    stats = _feature_stats(model, train_set.images)
    aes: list[Autoencoder] = []
    for t in pkg.tasks[:-1]:
        mean, std, nonneg, sample = stats[t.index - 1]
        for r in ratios:
            ae = build_autoencoder(t.index, r, t.features_shape, t.macs, mean, std, nonneg, sample)
            if sum(ae.macs()) > MAX_MAC_FRACTION * t.macs:
                _say(f"warning: boundary {t.index} ratio {r:g}: even the cheapest codec ({sum(ae.macs())} MACs) "
                     f"exceeds {MAX_MAC_FRACTION:.0%} of task {t.index} ({t.macs} MACs)")
            aes.append(ae)
    return aes


def _measure(model: EarlyExitModel, pkg, val_set: Dataset, aes: list[Autoencoder], base_acc: float) -> list[dict]:
    """A report row per autoencoder: its geometry, cost and validation accuracy with its boundary alone compressed."""
    base_logits = compressed_logits(model, val_set.images, {})
    rows = []
    for ae in aes:
        acc = evaluate_logits(pkg, boundary_logits(model, val_set.images, base_logits, ae), val_set.labels)["accuracy"]
        enc_macs, dec_macs = ae.macs()
        k = ae.after_task
        rows.append({"after_task": k, "requested_ratio": ae.requested_ratio, "ratio": round(ae.shape.ratio, 4),
                     "code_shape": list(ae.shape.code_shape), "stride": ae.shape.stride, "groups": ae.shape.groups,
                     "code_bytes": ae.shape.code_bytes, "float_bytes": ae.shape.float_bytes,
                     "val_accuracy": acc, "accuracy_cost": round(base_acc - acc, 6),
                     "encoder_macs": enc_macs, "decoder_macs": dec_macs, "task_macs": pkg.task(k).macs,
                     "mac_fraction": (enc_macs + dec_macs) / pkg.task(k).macs})
        log.info("boundary %d ratio %g (achieved %.2f): val accuracy %.4f (cost %+.4f)", k, ae.requested_ratio,
                 ae.shape.ratio, acc, base_acc - acc)
    return rows


def _export_chosen(model: EarlyExitModel, pkg, package: Path, val_set: Dataset, aes: list[Autoencoder],
                   rows: list[dict], base_acc: float, budget: float
                   ) -> tuple[dict[int, Autoencoder], list[dict], float]:
    """Export and check every candidate (parity and timing go into its row), select, and copy the picks into the
    package. Returns the chosen autoencoders, their manifest entries and the all-boundaries accuracy."""
    tmp = Path(tempfile.mkdtemp(prefix=".compress-", dir=package))
    try:
        val_feats, _ = _features_and_logits(model, torch.from_numpy(val_set.images[:PARITY_ITEMS]))
        for ae, row in zip(aes, rows, strict=True):
            enc, dec = (tmp / f"{part}_k{ae.after_task}_r{_ratio_key(ae.requested_ratio)}.onnx"
                        for part in ("enc", "dec"))
            export_codec(ae, tmp, enc.name, dec.name)
            f = val_feats[ae.after_task - 1].numpy()
            row["parity"] = check_codec_parity(ae, enc, dec, f)
            row["encoder_ms"], row["decoder_ms"] = time_codec(enc, dec, f)

        def joint_accuracy(picks: dict[int, int]) -> float:
            logits = compressed_logits(model, val_set.images, {k: aes[i] for k, i in picks.items()})
            return evaluate_logits(pkg, logits, val_set.labels)["accuracy"]

        cands = [Candidate(ae.after_task, ae.shape.ratio, row["accuracy_cost"]) for ae, row in zip(aes, rows,
                                                                                                   strict=True)]
        picks, all_acc = select(cands, budget, joint_accuracy, base_acc)
        chosen, entries = {}, []
        for k, i in picks.items():
            ae, row = aes[i], rows[i]
            within = row["accuracy_cost"] <= budget + EPS
            mine = [j for j, c in enumerate(cands) if c.after_task == k]
            for j in mine:
                rows[j]["chosen"] = j == i
            row["within_budget"] = within
            chosen[k] = ae
            name = f"k{k}_r{_ratio_key(ae.requested_ratio)}"
            shutil.copy(tmp / f"enc_{name}.onnx", package / f"enc{k}.onnx")
            shutil.copy(tmp / f"dec_{name}.onnx", package / f"dec{k}.onnx")
            losses = {_ratio_key(aes[j].requested_ratio): rows[j]["accuracy_cost"] for j in mine}
            entries.append(manifest_entry(ae, f"enc{k}.onnx", f"dec{k}.onnx", row, losses, within))
            if not within:
                _say(f"warning: boundary {k}: no ratio within the budget of {budget:.4f}; using the weakest "
                     f"({ae.shape.ratio:.2f}x, cost {row['accuracy_cost']:+.4f})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return chosen, entries, all_acc


def _ratio_key(r: float) -> str:
    return f"{r:g}"


def print_report(report: dict, file=sys.stdout) -> None:
    print(f"{report['package']}: compression at thresholds {report['thresholds']} "
          f"(uncompressed val accuracy {report['uncompressed_val_accuracy']:.4f}, budget "
          f"{100 * report['budget']:.2f} points)", file=file)
    head = (f"{'after':>5} {'ratio':>5} {'actual':>7} {'code':>7} {'float':>7} {'code shape':>12} {'cost pts':>8} "
            f"{'enc MACs':>9} {'dec MACs':>9} {'% task':>6} {'enc ms':>7} {'dec ms':>7}  chosen")
    print(head, file=file)
    for r in report["boundaries"]:
        mark = ("*" if r.get("within_budget", True) else "* (over budget)") if r.get("chosen") else ""
        print(f"{r['after_task']:>5} {r['requested_ratio']:>5g} {r['ratio']:>7.2f} {r['code_bytes']:>7} "
              f"{r['float_bytes']:>7} {'x'.join(map(str, r['code_shape'])):>12} {100 * r['accuracy_cost']:>+8.2f} "
              f"{r['encoder_macs']:>9} {r['decoder_macs']:>9} {100 * r['mac_fraction']:>5.1f}% "
              f"{r.get('encoder_ms', float('nan')):>7.3f} {r.get('decoder_ms', float('nan')):>7.3f}  {mark}", file=file)
    a = report["all_boundaries"]
    print(f"every boundary compressed at once ({', '.join(f'{k}: {v:.1f}x' for k, v in a['ratios'].items())}): "
          f"val accuracy {a['compressed_val_accuracy']:.4f} vs {a['uncompressed_val_accuracy']:.4f} uncompressed "
          f"({-100 * a['accuracy_cost']:+.2f} points)", file=file)


def _say(msg: str) -> None:
    say("compress", msg, log)


__all__ = ["Candidate", "CompressConfig", "CompressResult", "compress_package", "compressed_logits", "print_report",
           "select", "train_autoencoders"]
