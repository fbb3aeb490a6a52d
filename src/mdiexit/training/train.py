"""Train an early-exit model: joint (backbone + exits) or exits-only on a frozen backbone.

Seeded, resumable (one checkpoint per epoch), logged to `OUT/train.log`, with a progress bar that shows
per-exit loss and accuracy.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mdiexit.data import Dataset
from mdiexit.models import EarlyExitModel, create
from mdiexit.util import logging_to

log = logging.getLogger("mdiexit.train")


@dataclass
class TrainConfig:
    model: str = "mobilenetv2"
    dataset: str = "fashion-mnist"
    epochs: int = 8
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 4e-5
    mode: str = "joint"  # joint | exits-only
    exit_weight: float = 1.0  # final weight of each early exit's loss (the last exit's is 1)
    ramp_fraction: float = 0.5  # early-exit weights ramp from 10% to full over this fraction of training
    augment: bool = True
    seed: int = 0
    threads: int = 2
    val_fraction: float = 0.1
    image_size: int | None = None
    channels: int | None = None
    init_from: str | None = None  # checkpoint of a trained backbone (exits-only mode)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of 0..1 pixels."""
    x = images.astype(np.float32) / 255.0
    return x.mean(axis=(0, 2, 3)).tolist(), x.std(axis=(0, 2, 3)).tolist()


def build_model(cfg: TrainConfig, shape: tuple[int, ...], num_classes: int) -> EarlyExitModel:
    return create(cfg.model, shape, num_classes, cfg.mean, cfg.std)


def augment_batch(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, on uint8 NCHW."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :]
    out = padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def exit_weights(cfg: TrainConfig, progress: float, num_exits: int) -> list[float]:
    """Loss weight per exit: early exits ramp from 10% to `exit_weight` over `ramp_fraction` of training."""
    ramp = min(1.0, 0.1 + 0.9 * progress / max(cfg.ramp_fraction, 1e-9))
    return [cfg.exit_weight * ramp] * (num_exits - 1) + [1.0]


@torch.no_grad()
def predict_logits(model: EarlyExitModel, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits of every exit, shape (K, N, classes)."""
    model.eval()
    outs = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i:i + batch_size]).contiguous(memory_format=torch.channels_last)
        outs.append(torch.stack(model(x)).numpy())
    return np.concatenate(outs, axis=1)


def _set_trainable(model: EarlyExitModel, mode: str) -> list[torch.nn.Parameter]:
    if mode == "joint":
        return list(model.parameters())
    if mode != "exits-only":
        raise ValueError(f"unknown training mode {mode!r}; use joint or exits-only")
    params = []
    for k, task in enumerate(model.tasks):
        task.segment.requires_grad_(False)
        task.head.requires_grad_(k < len(model.tasks) - 1)
        if k < len(model.tasks) - 1:
            params += list(task.head.parameters())
    return params


def _freeze_bn(model: EarlyExitModel, mode: str) -> None:
    if mode == "exits-only":
        for k, task in enumerate(model.tasks):
            task.segment.eval()
            if k == len(model.tasks) - 1:
                task.head.eval()


def train(cfg: TrainConfig, train_set: Dataset, val_set: Dataset, out: Path, resume: bool = True,
          stop_after: int | None = None) -> EarlyExitModel:
    """Train and return the model. Writes OUT/checkpoint.pt after every epoch and OUT/model.pt at the end.

    stop_after: return after this many epochs in this call (a time-boxed slice); the next call resumes.
    """
    out.mkdir(parents=True, exist_ok=True)
    with logging_to(log, out / "train.log"):
        return _train(cfg, train_set, val_set, out, resume, stop_after)


def _train(cfg: TrainConfig, train_set: Dataset, val_set: Dataset, out: Path, resume: bool,
           stop_after: int | None) -> EarlyExitModel:
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    if not cfg.mean:
        cfg.mean, cfg.std = channel_stats(train_set.images)
    model = build_model(cfg, train_set.shape, len(train_set.classes)).to(memory_format=torch.channels_last)
    if cfg.init_from:
        model.load_state_dict(torch.load(cfg.init_from, map_location="cpu")["model"])
    params = _set_trainable(model, cfg.mode)
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(cfg.seed)
    start_epoch = 0
    ckpt_path = out / "checkpoint.pt"
    if resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ckpt["config"] != asdict(cfg):
            raise ValueError(f"{ckpt_path} was written with another config; use a new --out or --no-resume")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        sched.load_state_dict(ckpt["sched"])
        gen.set_state(ckpt["gen"])
        start_epoch = ckpt["epoch"]
        log.info("resumed from %s at epoch %d", ckpt_path, start_epoch)
    log.info("config %s", json.dumps(asdict(cfg)))
    labels = torch.from_numpy(train_set.labels)
    images = torch.from_numpy(train_set.images)
    last_epoch = cfg.epochs if stop_after is None else min(cfg.epochs, start_epoch + stop_after)
    for epoch in range(start_epoch, last_epoch):
        t0 = time.time()
        model.train()
        _freeze_bn(model, cfg.mode)
        order = torch.randperm(len(train_set), generator=gen)
        k = model.num_exits
        run_loss, run_correct, seen = np.zeros(k), np.zeros(k), 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", leave=False)
        for step in bar:
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            x, y = images[idx], labels[idx]
            if cfg.augment:
                x = augment_batch(x, gen)
            x = x.contiguous(memory_format=torch.channels_last)
            weights = exit_weights(cfg, (epoch * steps_per_epoch + step) / total_steps, k)
            logits = model(x)
            losses = [F.cross_entropy(lg, y) for lg in logits]
            loss = sum(w * lo for w, lo in zip(weights, losses, strict=True))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            n = len(y)
            seen += n
            run_loss += np.array([lo.item() for lo in losses]) * n
            run_correct += np.array([(lg.argmax(1) == y).sum().item() for lg in logits])
            if step % 20 == 0:
                bar.set_postfix_str(_exit_str(run_loss / seen, run_correct / seen))
        val_acc = (predict_logits(model, val_set.images).argmax(2) == val_set.labels[None]).mean(1)
        log.info("epoch %d/%d %.0fs train[%s] val acc per exit %s", epoch + 1, cfg.epochs, time.time() - t0,
                 _exit_str(run_loss / seen, run_correct / seen), " ".join(f"{a:.4f}" for a in val_acc))
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "gen": gen.get_state(), "epoch": epoch + 1, "config": asdict(cfg)}, ckpt_path)
    if last_epoch < cfg.epochs:
        log.info("stopped after epoch %d of %d; run again to resume", last_epoch, cfg.epochs)
        return model
    torch.save({"model": model.state_dict(), "config": asdict(cfg), "classes": train_set.classes,
                "input_shape": list(train_set.shape)}, out / "model.pt")
    log.info("wrote %s", out / "model.pt")
    return model


def load_trained(path: Path) -> tuple[EarlyExitModel, TrainConfig, list[str]]:
    """Load OUT/model.pt written by `train`."""
    blob = torch.load(path, map_location="cpu", weights_only=False)
    cfg = TrainConfig(**blob["config"])
    model = build_model(cfg, tuple(blob["input_shape"]), len(blob["classes"]))
    model.load_state_dict(blob["model"])
    return model.eval(), cfg, blob["classes"]


def _exit_str(loss: np.ndarray, acc: np.ndarray) -> str:
    return " ".join(f"e{i + 1} {lo:.3f}/{a:.3f}" for i, (lo, a) in enumerate(zip(loss, acc, strict=True)))
