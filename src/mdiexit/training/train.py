"""Train an early-exit model: joint (backbone + exits) or exits-only on a frozen backbone.

The model is a built-in name, your own `MODULE:FUNCTION` (`mdiexit.models.spec`), or a model object passed to
`train(..., model=...)`. The exits learn from the labels or, with `exit_targets="teacher"`, from the final
head's predictions (self-distillation: a pretrained classifier needs no labelled data). Seeded, resumable (one
checkpoint per epoch), logged to `OUT/train.log`, with a progress bar that shows per-exit loss and accuracy.
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

from mdiexit.data import Dataset, LazyImages, batches
from mdiexit.models import EarlyExitModel, create, normalisation, set_normalisation
from mdiexit.models.spec import builder_folder, is_builtin
from mdiexit.training.inference import predict_logits
from mdiexit.util import logging_to, say

log = logging.getLogger("mdiexit.train")


EXIT_TARGETS = ("labels", "teacher")
DEFAULT_BATCH = 128
MIN_STEPS_PER_EPOCH = 20  # fewer, and a small folder trains nothing in a few epochs
SMALLEST_AUTO_BATCH = 8


class TrainError(Exception):
    """A training setting that cannot work. The message names the fix."""


def torch_device(name: str) -> torch.device:
    """`cpu` or `cuda` (`cuda:N`): where training runs. A GPU asked for but absent is an error, not a fallback."""
    if name == "cpu":
        return torch.device("cpu")
    if not name.startswith("cuda"):
        raise TrainError(f"--device {name!r}: use cpu or cuda (cuda:N for one GPU of several)")
    if not torch.cuda.is_available():
        raise TrainError(f"--device {name}: this torch sees no CUDA GPU; train with --device cpu")
    return torch.device(name)


@dataclass
class TrainConfig:
    model: str = "mobilenetv2"  # a built-in name or MODULE:FUNCTION
    dataset: str = "fashion-mnist"
    epochs: int = 8
    batch_size: int | None = None  # None: DEFAULT_BATCH, lowered so that an epoch takes MIN_STEPS_PER_EPOCH steps
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
    mean: list[float] = field(default_factory=list)  # empty: the model's own, else computed from the data
    std: list[float] = field(default_factory=list)
    exit_targets: str = "labels"  # labels | teacher (the exits learn the final head's predictions)
    num_classes: int | None = None  # None: the dataset's classes
    classes_file: str | None = None  # class names, one a line (else the dataset's)
    data_dir: str | None = None  # where the data was (export, compress and evaluate default to it)
    builder_dir: str | None = None  # the folder your MODULE:FUNCTION was found in (later commands look there first)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def channel_stats(images: np.ndarray | LazyImages, batch: int = 256) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of 0..1 pixels, a batch at a time."""
    total = np.zeros(images.shape[1])
    squares = np.zeros(images.shape[1])
    for x in batches(images, batch):
        x = x.astype(np.float64) / 255.0
        total += x.sum(axis=(0, 2, 3))
        squares += (x * x).sum(axis=(0, 2, 3))
    n = len(images) * images.shape[2] * images.shape[3]
    mean = total / n
    return mean.tolist(), np.sqrt(np.maximum(squares / n - mean * mean, 0)).tolist()


def batch_of(images: np.ndarray | LazyImages, idx: torch.Tensor) -> torch.Tensor:
    """The items `idx` as a uint8 tensor (a lazy dataset decodes just these)."""
    return torch.from_numpy(np.ascontiguousarray(images[idx.numpy()]))


def build_model(cfg: TrainConfig, shape: tuple[int, ...], num_classes: int) -> EarlyExitModel:
    return create(cfg.model, shape, num_classes, cfg.mean or None, cfg.std or None,
                  search=[cfg.builder_dir] if cfg.builder_dir else [])


def _normalise(model: EarlyExitModel, cfg: TrainConfig, train_set: Dataset, custom: bool) -> None:
    """--mean/--std when given; else the model's own (a pretrained backbone's); else the training data's, with a
    warning when that may break a pretrained backbone. The values used end up in cfg (and the checkpoint)."""
    if cfg.mean or cfg.std:
        if not (cfg.mean and cfg.std):
            raise TrainError("give --mean and --std together (per-channel statistics of 0..1 pixels)")
        set_normalisation(model, cfg.mean, cfg.std)
        return
    own = normalisation(model)
    if own is not None:
        cfg.mean, cfg.std = own
        return
    cfg.mean, cfg.std = channel_stats(train_set.images)
    set_normalisation(model, cfg.mean, cfg.std)
    if custom or cfg.mode == "exits-only" or cfg.init_from:
        say("train", f"warning: input mean {_fmt(cfg.mean)} / std {_fmt(cfg.std)} were computed from the training "
                     "data; a pretrained backbone expects the statistics it was trained with: pass --mean/--std "
                     "(ImageNet: --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225) or build_early_exit(..., mean=, "
                     "std=)", log)


def _fmt(v: list[float]) -> str:
    return ",".join(f"{x:.3f}" for x in v)


def class_names(cfg: TrainConfig, data_classes: list[str]) -> list[str]:
    """The model's class names: the class file's, else the dataset's, padded to --num-classes."""
    from mdiexit.data import read_classes

    names = read_classes(Path(cfg.classes_file)) if cfg.classes_file else list(data_classes)
    n = cfg.num_classes or len(names)
    if n < len(names):
        raise TrainError(f"--num-classes {n} is less than the {len(names)} class names; raise it or drop names")
    return names + [f"class_{i}" for i in range(len(names), n)]


def data_splits(cfg: TrainConfig, data_dir: Path | None, classes: list[str] | None = None, lazy: bool = True):
    """The train/val/test splits a checkpoint was trained on (a folder labelled against its class names when it
    was trained with a class file or a kept head); lazy: read batch by batch (`LazyImages`)."""
    from mdiexit.data import load

    keep = classes if (cfg.classes_file or cfg.num_classes) else None
    data_dir = data_dir or (Path(cfg.data_dir) if cfg.data_dir else None)
    return load(cfg.dataset, data_dir, cfg.val_fraction, cfg.seed, cfg.image_size, cfg.channels, keep, lazy)


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


def batch_for(asked: int | None, items: int) -> int:
    """The batch size: the one asked for (with a warning when it leaves an epoch fewer than MIN_STEPS_PER_EPOCH
    steps), else DEFAULT_BATCH lowered until an epoch has that many steps (not below SMALLEST_AUTO_BATCH)."""
    if asked is not None:
        if asked < 1:
            raise TrainError(f"--batch-size {asked}: give a positive number")
        steps = math.ceil(items / asked)
        if steps < MIN_STEPS_PER_EPOCH:
            say("train", f"warning: {items} training items in batches of {asked} make {steps} optimizer steps an "
                         f"epoch, too few to learn much; pass --batch-size {max(1, items // MIN_STEPS_PER_EPOCH)} "
                         f"(about {MIN_STEPS_PER_EPOCH} steps an epoch) or more --epochs", log)
        return asked
    batch = max(SMALLEST_AUTO_BATCH, min(DEFAULT_BATCH, items // MIN_STEPS_PER_EPOCH))
    steps = math.ceil(items / batch)
    if steps < MIN_STEPS_PER_EPOCH:
        say("train", f"warning: only {items} training items: even in batches of {batch} an epoch takes {steps} "
                     f"optimizer steps; add images, or raise --epochs so that training takes about "
                     f"{MIN_STEPS_PER_EPOCH * 8} steps in all", log)
    elif batch < DEFAULT_BATCH:
        say("train", f"{items} training items: batches of {batch} (not {DEFAULT_BATCH}), so that an epoch takes "
                     f"{steps} optimizer steps; --batch-size sets it", log)
    return batch


def exit_weights(cfg: TrainConfig, progress: float, num_exits: int) -> list[float]:
    """Loss weight per exit: early exits ramp from 10% to `exit_weight` over `ramp_fraction` of training."""
    ramp = min(1.0, 0.1 + 0.9 * progress / max(cfg.ramp_fraction, 1e-9))
    return [cfg.exit_weight * ramp] * (num_exits - 1) + [1.0]


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
          stop_after: int | None = None, model: EarlyExitModel | None = None,
          device: str = "cpu") -> EarlyExitModel:
    """Train and return the model. Writes OUT/checkpoint.pt after every epoch and OUT/model.pt at the end.

    stop_after: return after this many epochs in this call (a time-boxed slice); the next call resumes.
    model: train this model object (from `build_early_exit`) instead of building `cfg.model`; to rebuild it
    later, pass it again (`load_trained(path, model=...)`) or name its builder in cfg.model (MODULE:FUNCTION).
    device: `cpu` or `cuda`; checkpoints are written with CPU tensors either way, so a run may move between them.
    """
    dev = torch_device(device)
    out.mkdir(parents=True, exist_ok=True)
    with logging_to(log, out / "train.log"):
        return _train(cfg, train_set, val_set, out, resume, stop_after, model, dev)


def _check(cfg: TrainConfig, train_set: Dataset) -> None:
    if cfg.exit_targets not in EXIT_TARGETS:
        raise TrainError(f"--exit-targets {cfg.exit_targets!r}: choose labels or teacher")
    if cfg.exit_targets == "teacher" and cfg.mode != "exits-only":
        raise TrainError("--exit-targets teacher learns from the final head, which must stay fixed: add "
                         "--freeze-backbone (train the exits only)")
    if cfg.exit_targets == "labels" and not (train_set.labels >= 0).any():
        raise TrainError("the training data has no labels (images directly in the folder, no class sub-folders): "
                         "use --exit-targets teacher --freeze-backbone, or sort the images into class folders")


def _read_init(path: str) -> dict:
    """The checkpoint --init-from names: its weights, and its class names when it is a model.pt."""
    if not Path(path).is_file():
        raise TrainError(f"--init-from {path}: no such file; give a model.pt or checkpoint.pt that `mdiexit train` "
                         "wrote")
    return _read_checkpoint(Path(path), f"--init-from {path}: not a checkpoint written by `mdiexit train`")


def _read_checkpoint(path: Path, what: str) -> dict:
    """A checkpoint file with its weights, or a TrainError: ``what`` and torch's reason."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
        blob["model"]
    except (KeyError, TypeError, RuntimeError, EOFError, ValueError) as e:
        raise TrainError(f"{what} ({type(e).__name__}: {e})") from None
    return blob


def _train(cfg: TrainConfig, train_set: Dataset, val_set: Dataset, out: Path, resume: bool,
           stop_after: int | None, given: EarlyExitModel | None, device: torch.device) -> EarlyExitModel:
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    _check(cfg, train_set)
    init = _read_init(cfg.init_from) if cfg.init_from else None
    classes = class_names(cfg, train_set.classes or (init or {}).get("classes", []))
    if len(classes) < 2:
        raise TrainError("the data names no classes (images directly in the folder): give --classes FILE or "
                         "--num-classes N (the outputs of the model's head), or --init-from a model.pt that has them")
    if cfg.exit_targets == "labels":  # unlabelled items (-1) teach nothing here
        train_set, val_set = (d.subset(np.flatnonzero(d.labels >= 0)) for d in (train_set, val_set))
    if given is not None:
        model = given
        if ":" not in cfg.model:  # not rebuildable by name: load_trained will need the object again
            cfg.model = f"<object {type(model).__name__}>"
        if tuple(model.input_shape) != tuple(train_set.shape):
            raise TrainError(f"the model takes {tuple(model.input_shape)}, the data is {train_set.shape}; "
                             "use --image-size/--channels or build the model for the data")
    else:
        cfg.builder_dir = cfg.builder_dir or builder_folder(cfg.model)
        model = build_model(cfg, train_set.shape, len(classes))
    if init is not None:
        load_weights(model, init["model"], f"--init-from {cfg.init_from}: its weights do not fit this model",
                     "start from a checkpoint of the same model and classes")
    _normalise(model, cfg, train_set, custom=given is not None or not is_builtin(cfg.model))
    model = model.to(device, memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        log.info("training on %s (%s)", device, torch.cuda.get_device_name(device))
    for p in model.placement:
        log.info("exit after block %d: %.1f%% of MACs, %d B of features%s", p["block"], 100 * p["mac_fraction"],
                 p["feature_bytes"], f" ({p['note']})" if p["note"] else "")
        if p["note"]:
            say("train", f"exit placement: {p['note']}")
    params = _set_trainable(model, cfg.mode)
    cfg.batch_size = batch_for(cfg.batch_size, len(train_set))
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
        opt.load_state_dict(ckpt["opt"])  # moves the momenta to the parameters' device
        sched.load_state_dict(ckpt["sched"])
        gen.set_state(ckpt["gen"])
        start_epoch = ckpt["epoch"]
        log.info("resumed from %s at epoch %d", ckpt_path, start_epoch)
    log.info("config %s", json.dumps(asdict(cfg)))
    labels = torch.from_numpy(train_set.labels)
    last_epoch = cfg.epochs if stop_after is None else min(cfg.epochs, start_epoch + stop_after)
    val_acc, truth = None, None
    for epoch in range(start_epoch, last_epoch):
        t0 = time.time()
        model.train()
        _freeze_bn(model, cfg.mode)
        order = torch.randperm(len(train_set), generator=gen)
        k = model.num_exits
        # running sums stay on the device: reading them every step would wait for the GPU every step
        run_loss, run_correct, seen = torch.zeros(k, device=device), torch.zeros(k, device=device), 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", leave=False)
        for step in bar:
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            x, y = batch_of(train_set.images, idx), labels[idx].to(device, non_blocking=True)
            if cfg.augment:
                x = augment_batch(x, gen)
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            weights = exit_weights(cfg, (epoch * steps_per_epoch + step) / total_steps, k)
            logits = model(x)
            if cfg.exit_targets == "teacher":  # the frozen final head's predictions are the targets
                y = logits[-1].detach().argmax(1)
                soft = F.softmax(logits[-1].detach(), 1)
                losses = [F.cross_entropy(lg, soft) for lg in logits[:-1]] + [logits[-1].new_zeros(())]
            else:
                losses = [F.cross_entropy(lg, y) for lg in logits]
            loss = sum(w * lo for w, lo in zip(weights, losses, strict=True))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            n = len(y)
            seen += n
            run_loss += torch.stack([lo.detach() for lo in losses]) * n
            run_correct += torch.stack([(lg.argmax(1) == y).sum() for lg in logits])
            if step % 20 == 0:
                bar.set_postfix_str(_exit_str(*_per_item(run_loss, run_correct, seen)))
        val_logits = predict_logits(model, val_set.images)
        truth = val_logits[-1].argmax(1) if cfg.exit_targets == "teacher" else val_set.labels
        val_acc = (val_logits.argmax(2) == truth[None]).mean(1)
        log.info("epoch %d/%d %.0fs train[%s] val %s per exit %s", epoch + 1, cfg.epochs, time.time() - t0,
                 _exit_str(*_per_item(run_loss, run_correct, seen)),
                 "agreement with the final exit" if cfg.exit_targets == "teacher" else "acc",
                 " ".join(f"{a:.4f}" for a in val_acc))
        torch.save({"model": _cpu(model.state_dict()), "opt": _cpu(opt.state_dict()), "sched": sched.state_dict(),
                    "gen": gen.get_state(), "epoch": epoch + 1, "config": asdict(cfg)}, ckpt_path)
    if last_epoch < cfg.epochs:
        log.info("stopped after epoch %d of %d; run again to resume", last_epoch, cfg.epochs)
        return model.cpu()
    if val_acc is not None and len(val_set):
        report_exits(val_acc, truth, len(classes), cfg.exit_targets)
    torch.save({"model": _cpu(model.state_dict()), "config": asdict(cfg), "classes": classes,
                "input_shape": list(train_set.shape), "placement": model.placement}, out / "model.pt")
    log.info("wrote %s", out / "model.pt")
    return model.cpu()


def report_exits(val_acc: np.ndarray, truth: np.ndarray, num_classes: int, exit_targets: str) -> None:
    """Say each exit's validation accuracy (agreement with the final exit, for teacher targets), and warn about an
    exit that is no better than guessing: always the most common answer, or uniform over the classes."""
    what = "agreement with the final exit" if exit_targets == "teacher" else "accuracy"
    say("train", f"validation {what} per exit: " + " ".join(f"e{k + 1} {a:.3f}" for k, a in enumerate(val_acc)), log)
    counts = np.bincount(truth[truth >= 0], minlength=num_classes)
    chance = max(1 / num_classes, counts.max() / max(1, counts.sum()))
    near = [k + 1 for k, a in enumerate(val_acc[:-1]) if a < 1.5 * chance]
    if near:
        say("train", f"warning: exit{'s' if len(near) > 1 else ''} {', '.join(map(str, near))} near chance "
                     f"({chance:.3f}): train longer (--epochs), with smaller batches (--batch-size) or on more "
                     "data; such an exit never takes an item at the default thresholds", log)


def load_trained(path: Path, model: EarlyExitModel | None = None) -> tuple[EarlyExitModel, TrainConfig, list[str]]:
    """Load OUT/model.pt written by `train`: the model is rebuilt from the spec it records (a built-in name or
    MODULE:FUNCTION), or its weights go into `model` (the object it was trained as)."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"checkpoint {path} not found; give the model.pt that `mdiexit train` wrote")
    what = f"{path} is not a model.pt written by `mdiexit train`"
    blob = _read_checkpoint(path, what)
    try:
        cfg = TrainConfig(**blob["config"])
    except (KeyError, TypeError) as e:
        raise TrainError(f"{what} ({type(e).__name__}: {e})") from None
    if model is None:
        if not is_builtin(cfg.model) and ":" not in cfg.model:
            raise TrainError(f"{path} holds a model that was passed to train() as an object ({cfg.model!r}); pass "
                             "it again (model=...), or train with cfg.model='MODULE:FUNCTION'")
        model = build_model(cfg, tuple(blob["input_shape"]), len(blob["classes"]))
    load_weights(model, blob["model"], f"{path}: the weights do not fit the model {cfg.model!r} builds now",
                 "rebuild it exactly as it was trained")
    model.placement = blob.get("placement", [])
    return model.eval(), cfg, blob["classes"]


def load_weights(model: EarlyExitModel, state: dict, what: str, fix: str) -> None:
    """The weights into the model, or a TrainError saying which do not fit (torch's first line) and the fix."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1:2] or [str(e)]
        raise TrainError(f"{what} ({first[0].strip()}); {fix}") from None


def _cpu(state):
    """A state dict (nested dicts and lists) with its tensors on the CPU: checkpoints load anywhere."""
    if isinstance(state, torch.Tensor):
        return state.cpu()
    if isinstance(state, dict):
        return {k: _cpu(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(_cpu(v) for v in state)
    return state


def _per_item(loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> tuple[np.ndarray, np.ndarray]:
    return loss_sum.cpu().numpy() / seen, correct.cpu().numpy() / seen


def _exit_str(loss: np.ndarray, acc: np.ndarray) -> str:
    return " ".join(f"e{i + 1} {lo:.3f}/{a:.3f}" for i, (lo, a) in enumerate(zip(loss, acc, strict=True)))
