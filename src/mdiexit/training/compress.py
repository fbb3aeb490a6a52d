"""Learned feature compression at task boundaries (DESIGN §5 `compression`): a small conv bottleneck
autoencoder per boundary whose 8-bit code is what travels between nodes.

For every boundary k = 1..K-1 and every requested ratio r, train an encoder (1x1 or stride-s patch conv
C -> c, sigmoid, 8-bit rounding with a straight-through estimator) and a decoder (uint8 code / 255, 1x1
conv back to C channels, pixel shuffle if the encoder downsampled) on the frozen backbone, with a
reconstruction + distillation loss. Per boundary, keep the strongest ratio whose end-to-end validation
accuracy at the package's default thresholds drops by at most `budget`; export it as `enc{k}.onnx`
(`x` -> uint8 `code`) and `dec{k}.onnx` (`code` -> `features`), check ONNX Runtime against torch, and
record it in the manifest. Writes `compression_report.json` and logs to `compress.log` in the package.

    result = compress_package(Path("models/mobilenetv2-fmnist"), Path("runs/mnv2/model.pt"), ratios=(4, 8, 16))
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mdiexit.data import Dataset, load
from mdiexit.engine import ort_session
from mdiexit.evaluate import evaluate_logits
from mdiexit.models import EarlyExitModel
from mdiexit.models.macs import count_macs
from mdiexit.package import PackageError, load_package
from mdiexit.training.train import load_trained, seed_everything

log = logging.getLogger("mdiexit.compress")

MAX_MAC_FRACTION = 0.10  # encoder + decoder MACs, relative to the task before the boundary
PARITY_ITEMS = 256
TIMING_REPEATS = 50
ENCODER_GAIN = 0.5  # initial scale of standardised features into the sigmoid (keeps codes off the rails)
STATE_FILE = "compress_state.pt"  # training checkpoint (resumed when the settings match)


# ------------------------------------------------------------------ the autoencoder

@dataclass(frozen=True)
class CodecShape:
    """Geometry of one autoencoder: features (C, H, W) -> uint8 code (c, h, w) with spatial stride s."""
    features_shape: tuple[int, int, int]
    channels: int  # c
    stride: int  # s (1 = no spatial reduction)
    groups: int  # conv groups of encoder and decoder (1 = dense; more = cheaper)

    @property
    def code_shape(self) -> tuple[int, int, int]:
        _, h, w = self.features_shape
        return self.channels, math.ceil(h / self.stride), math.ceil(w / self.stride)

    @property
    def code_bytes(self) -> int:
        return int(np.prod(self.code_shape))  # uint8

    @property
    def float_bytes(self) -> int:
        return 4 * int(np.prod(self.features_shape))

    @property
    def ratio(self) -> float:
        return self.float_bytes / self.code_bytes


def code_geometry(features_shape: tuple[int, ...], ratio: float) -> tuple[int, int]:
    """(c, stride) so that the uint8 code has about float32 bytes / ratio bytes: no spatial reduction while at
    least one channel fits, else the smallest power-of-two stride that makes one fit (c is then at least 1)."""
    ch, h, w = features_shape
    target = ch * h * w * 4 / ratio
    s = 1
    while True:
        c = int(target // (math.ceil(h / s) * math.ceil(w / s)))
        if c >= 1 or (s >= h and s >= w):
            return max(1, c), s
        s *= 2


class Encoder(nn.Module):
    """features -> code in 0..255 (float, integral in eval; straight-through rounding in training)."""

    def __init__(self, shape: CodecShape, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        ch, h, w = shape.features_shape
        s = shape.stride
        self.register_buffer("shift", (-mean / std).view(1, -1, 1, 1).float())
        self.register_buffer("scale", (1.0 / std).view(1, -1, 1, 1).float())
        self.pad = nn.ZeroPad2d((0, (-w) % s, 0, (-h) % s)) if s > 1 and (h % s or w % s) else nn.Identity()
        self.conv = nn.Conv2d(ch, shape.channels, s, s, groups=shape.groups)
        for block in self.conv.weight.data.view(shape.groups, shape.channels // shape.groups, -1):
            nn.init.orthogonal_(block, gain=ENCODER_GAIN)  # per group: orthonormal rows
        nn.init.zeros_(self.conv.bias)

    @torch.no_grad()
    def init_pca(self, sample: torch.Tensor, shape: CodecShape) -> None:
        """Rows of each group's conv = the top principal directions of that group's standardised input patches
        (the best linear code to start from)."""
        g, c, s = shape.groups, shape.channels, shape.stride
        ch = shape.features_shape[0]
        x = self.pad(sample * self.scale + self.shift)  # (N, C, H', W')
        n, _, hp, wp = x.shape
        patches = x.view(n, ch, hp // s, s, wp // s, s).permute(0, 2, 4, 1, 3, 5).reshape(-1, ch * s * s)
        per = ch // g * s * s
        w = self.conv.weight.data.view(g, c // g, per)
        for i in range(g):
            p = patches[:, i * per:(i + 1) * per].double()
            _, vecs = torch.linalg.eigh(p.T @ p / len(p))  # ascending eigenvalues
            w[i] = ENCODER_GAIN * vecs[:, -(c // g):].flip(1).T.float()
        self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv(self.pad(x * self.scale + self.shift))
        q = torch.sigmoid(z) * 255.0
        return q + (torch.round(q) - q).detach()  # straight-through estimator


class Decoder(nn.Module):
    """code (uint8, or float 0..255) -> /255 -> logit -> 1x1 conv (-> pixel shuffle, crop) -> features."""

    def __init__(self, shape: CodecShape, mean: torch.Tensor, std: torch.Tensor, relu: bool):
        super().__init__()
        ch, h, w = shape.features_shape
        s = shape.stride
        self.h, self.w = h, w
        self.register_buffer("mean", mean.view(1, -1, 1, 1).float())
        self.register_buffer("std", std.view(1, -1, 1, 1).float())
        self.conv = nn.Conv2d(shape.channels, ch * s * s, 1, groups=shape.groups)
        self.shuffle = nn.PixelShuffle(s) if s > 1 else nn.Identity()
        self.crop = s > 1 and (h % s or w % s)
        self.relu = nn.ReLU() if relu else nn.Identity()

    @torch.no_grad()
    def init_from(self, enc: Encoder, shape: CodecShape) -> None:
        """Start as the encoder's transpose (its pseudo-inverse: the encoder's rows are orthogonal)."""
        g, c, ch, s = shape.groups, shape.channels, shape.features_shape[0], shape.stride
        w = enc.conv.weight.view(g, c // g, ch // g * s * s) / ENCODER_GAIN ** 2
        self.conv.weight.copy_(w.transpose(1, 2).reshape(ch * s * s, c // g, 1, 1))
        self.conv.bias.zero_()

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        u = (code.float() * (1.0 / 255.0)).clamp(0.5 / 255.0, 254.5 / 255.0)
        y = self.shuffle(self.conv(torch.log(u / (1.0 - u))))  # logit: undo the encoder's sigmoid
        if self.crop:
            y = y.narrow(2, 0, self.h).narrow(3, 0, self.w)
        return self.relu(y * self.std + self.mean)


class Autoencoder(nn.Module):
    def __init__(self, after_task: int, requested_ratio: float, shape: CodecShape, mean: torch.Tensor,
                 std: torch.Tensor, relu: bool, sample: torch.Tensor | None = None):
        """sample: features of some training items, for a PCA start (orthogonal random rows without it)."""
        super().__init__()
        self.after_task = after_task
        self.requested_ratio = requested_ratio
        self.shape = shape
        self.relu = relu
        self.encoder = Encoder(shape, mean, std)
        if sample is not None:
            self.encoder.init_pca(sample, shape)
        self.decoder = Decoder(shape, mean, std, relu)
        self.decoder.init_from(self.encoder, shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    @torch.no_grad()
    def macs(self) -> tuple[int, int]:
        """(encoder, decoder) MACs per item, counted with `count_macs`."""
        x = torch.zeros((1, *self.shape.features_shape))
        enc, code = count_macs(self.encoder, x)
        dec, _ = count_macs(self.decoder, code)
        return enc, dec


def build_autoencoder(after_task: int, ratio: float, features_shape: tuple[int, ...], task_macs: int,
                      mean: torch.Tensor, std: torch.Tensor, relu: bool, sample: torch.Tensor | None = None
                      ) -> Autoencoder:
    """The densest autoencoder for this ratio whose MACs fit in MAX_MAC_FRACTION of the task's MACs (grouped
    convs when dense 1x1 convs would not fit; the cheapest grouping when none fits, with a warning)."""
    c, s = code_geometry(features_shape, ratio)
    g_max = math.gcd(features_shape[0], c)
    limit = MAX_MAC_FRACTION * task_macs
    ae = None
    for g in [d for d in range(1, g_max + 1) if g_max % d == 0]:
        ae = Autoencoder(after_task, ratio, CodecShape(tuple(features_shape), c, s, g), mean, std, relu)
        if sum(ae.macs()) <= limit:
            break
    else:
        _say(f"warning: boundary {after_task} ratio {ratio:g}: even the cheapest codec ({sum(ae.macs())} MACs) "
             f"exceeds {MAX_MAC_FRACTION:.0%} of task {after_task} ({task_macs} MACs)")
    if sample is not None:
        ae = Autoencoder(after_task, ratio, ae.shape, mean, std, relu, sample)
    return ae


class _EncoderExport(nn.Module):
    def __init__(self, enc: Encoder):
        super().__init__()
        self.enc = enc

    def forward(self, x):
        return self.enc(x).to(torch.uint8)


# ------------------------------------------------------------------ torch helpers

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


def train_autoencoders(model: EarlyExitModel, aes: list[Autoencoder], train_set: Dataset, epochs: int, seed: int,
                       state_path: Path | None = None, batch_size: int = 128, lr: float = 5e-3,
                       distill_weight: float = 1.0, progress: bool = True) -> None:
    """Train every autoencoder together (the frozen backbone runs once per batch). Loss per autoencoder:
    MSE of standardised features + distill_weight * KL of the downstream exits. Checkpoints after every
    epoch to `state_path` and resumes from it when its settings match."""
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
            opt.load_state_dict(st["opt"])
            sched.load_state_dict(st["sched"])
            gen.set_state(st["gen"])
            start = st["epoch"]
            log.info("resumed autoencoder training from %s at epoch %d", state_path, start)
        else:
            log.info("%s was written with other settings; training from scratch", state_path)
    images = torch.from_numpy(train_set.images)  # no labels: the loss distils the uncompressed model
    for epoch in range(start, epochs):
        t0 = time.time()
        for ae in aes:
            ae.train()
        order = torch.randperm(len(train_set), generator=gen)
        run = np.zeros((len(aes), 2))
        seen = 0
        bar = tqdm(range(steps_per_epoch), desc=f"compress epoch {epoch + 1}/{epochs}", unit="step", leave=False,
                   disable=not progress)
        for step in bar:
            idx = order[step * batch_size:(step + 1) * batch_size]
            feats, teacher = _features_and_logits(model, images[idx])
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
            torch.save({"settings": settings, "aes": [ae.state_dict() for ae in aes], "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "gen": gen.get_state(), "epoch": epoch + 1}, state_path)
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


# ------------------------------------------------------------------ ONNX

def export_codec(ae: Autoencoder, folder: Path, enc_name: str, dec_name: str) -> None:
    """enc: input `x` (float32 features) -> output `code` (uint8); dec: input `code` -> output `features`."""
    ae.eval()
    x = torch.zeros((2, *ae.shape.features_shape))
    enc = _EncoderExport(ae.encoder).eval()  # eval: export restores the wrapper's mode
    torch.onnx.export(enc, (x,), str(folder / enc_name), input_names=["x"], output_names=["code"], dynamo=False,
                      dynamic_axes={"x": {0: "batch"}, "code": {0: "batch"}}, opset_version=17)
    code = torch.zeros((2, *ae.shape.code_shape), dtype=torch.uint8)
    torch.onnx.export(ae.decoder.eval(), (code,), str(folder / dec_name), input_names=["code"],
                      output_names=["features"], dynamo=False,
                      dynamic_axes={"code": {0: "batch"}, "features": {0: "batch"}}, opset_version=17)
    ae.eval()


def check_codec_parity(ae: Autoencoder, enc_path: Path, dec_path: Path, feats: np.ndarray) -> dict:
    """ORT vs torch on real features: codes equal up to +-1, decoded features (from the same code) close."""
    enc_s, dec_s = ort_session(enc_path, 1), ort_session(dec_path, 1)
    _check_io(enc_s, "x", "code", ae.shape.features_shape, ae.shape.code_shape, enc_path)
    _check_io(dec_s, "code", "features", ae.shape.code_shape, ae.shape.features_shape, dec_path)
    code_o = enc_s.run(["code"], {"x": feats})[0]
    with torch.no_grad():
        code_t = ae.encoder(torch.from_numpy(feats)).numpy()
        dec_t = ae.decoder(torch.from_numpy(code_o)).numpy()
    if code_o.dtype != np.uint8:
        raise PackageError(f"{enc_path}: code dtype {code_o.dtype}, expected uint8")
    dec_o = dec_s.run(["features"], {"code": code_o})[0]
    code_err = int(np.abs(code_o.astype(np.int32) - code_t.astype(np.int32)).max())
    scale = max(1.0, float(np.abs(dec_t).max()))
    dec_err = float(np.abs(dec_o - dec_t).max()) / scale
    if code_err > 1 or dec_err > 1e-4 or dec_o.dtype != np.float32:
        raise PackageError(f"boundary {ae.after_task}: ONNX Runtime disagrees with torch (code error {code_err}, "
                           f"decoded relative error {dec_err:.2e}); compression not written")
    return {"code_max_abs_diff": code_err, "code_diff_fraction": float((code_o != code_t).mean()),
            "decoded_max_rel_error": dec_err}


def _check_io(sess, inp: str, out: str, in_shape, out_shape, path: Path) -> None:
    i, o = sess.get_inputs(), sess.get_outputs()
    if [x.name for x in i] != [inp] or [x.name for x in o] != [out]:
        raise PackageError(f"{path}: expected input {inp!r} and output {out!r}, got "
                           f"{[x.name for x in i]} -> {[x.name for x in o]}")
    if list(i[0].shape[1:]) != list(in_shape) or list(o[0].shape[1:]) != list(out_shape):
        raise PackageError(f"{path}: shapes {i[0].shape} -> {o[0].shape}, expected {list(in_shape)} -> "
                           f"{list(out_shape)}")


def time_codec(enc_path: Path, dec_path: Path, feats: np.ndarray, repeats: int = TIMING_REPEATS) -> tuple[float, float]:
    """Median ms of encoder and decoder at batch 1 with one ORT thread."""
    enc_s, dec_s = ort_session(enc_path, 1), ort_session(dec_path, 1)
    x = feats[:1]
    code = enc_s.run(["code"], {"x": x})[0]
    for _ in range(5):
        enc_s.run(["code"], {"x": x})
        dec_s.run(["features"], {"code": code})
    te, td = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        enc_s.run(["code"], {"x": x})
        t1 = time.perf_counter()
        dec_s.run(["features"], {"code": code})
        t2 = time.perf_counter()
        te.append(t1 - t0)
        td.append(t2 - t1)
    return 1e3 * statistics.median(te), 1e3 * statistics.median(td)


# ------------------------------------------------------------------ the command

@dataclass
class CompressResult:
    package: Path
    chosen: dict[int, Autoencoder]  # after_task -> the autoencoder written to the package (torch, eval mode)
    report: dict
    candidates: dict[tuple[int, float], Autoencoder] = field(default_factory=dict)


def manifest_entry(ae: Autoencoder, enc_name: str, dec_name: str, row: dict, losses: dict[str, float],
                   within: bool) -> dict:
    enc_macs, dec_macs = ae.macs()
    return {"after_task": ae.after_task, "ratio": round(ae.shape.ratio, 4), "requested_ratio": ae.requested_ratio,
            "encoder": enc_name, "decoder": dec_name, "code_dtype": "uint8",
            "features_shape": list(ae.shape.features_shape),
            "outputs": [{"name": "code", "shape": list(ae.shape.code_shape), "dtype": "uint8"}],
            "accuracy_cost": row["accuracy_cost"], "code_bytes": ae.shape.code_bytes,
            "float_bytes": ae.shape.float_bytes, "encoder_macs": enc_macs, "decoder_macs": dec_macs,
            "val_accuracy_loss_per_ratio": losses, "within_budget": within}


def _ratio_key(r: float) -> str:
    return f"{r:g}"


def compress_package(package: Path, checkpoint: Path, ratios: tuple[float, ...] = (4, 8, 16), budget: float = 0.005,
                     epochs: int = 3, data_dir: Path | None = None, max_train_items: int | None = None, seed: int = 0,
                     threads: int = 1, batch_size: int = 128, lr: float = 5e-3, train_set: Dataset | None = None,
                     val_set: Dataset | None = None, progress: bool = True) -> CompressResult:
    """Train, select, export and record one autoencoder per task boundary of the package at `package`.

    train_set / val_set default to the training config's splits (as `mdiexit export` uses them).
    """
    package = Path(package)
    pkg = load_package(package, check_onnx=True)
    handler = _log_to(package / "compress.log")
    try:
        return _compress(pkg, package, checkpoint, ratios, budget, epochs, data_dir, max_train_items, seed, threads,
                         batch_size, lr, train_set, val_set, progress)
    finally:
        log.removeHandler(handler)
        handler.close()


def _compress(pkg, package, checkpoint, ratios, budget, epochs, data_dir, max_train_items, seed, threads, batch_size,
              lr, train_set, val_set, progress) -> CompressResult:
    torch.set_num_threads(threads)
    seed_everything(seed)
    model, cfg, _ = load_trained(checkpoint)
    model = _frozen(model)
    infos = model.task_info()
    if [i.features_shape for i in infos] != [t.features_shape for t in pkg.tasks]:
        raise PackageError(f"{checkpoint} does not match {package}: its feature shapes "
                           f"{[list(i.features_shape) for i in infos]} differ from the manifest's")
    if pkg.num_tasks < 2:
        raise PackageError(f"{package}: one task has no boundary to compress")
    ratios = tuple(sorted({float(r) for r in ratios}))
    if not ratios or min(ratios) <= 1:
        raise ValueError(f"ratios must be > 1, got {ratios}")
    if train_set is None or val_set is None:
        splits = load(cfg.dataset, data_dir, cfg.val_fraction, cfg.seed, cfg.image_size, cfg.channels)
        train_set, val_set = train_set or splits.train, val_set or splits.val
    if max_train_items is not None and max_train_items < len(train_set):
        idx = np.sort(np.random.default_rng(seed).permutation(len(train_set))[:max_train_items])
        train_set = train_set.subset(idx)
    log.info("compress %s with %s: ratios %s, budget %.4f, %d epochs on %d train items, %d val items", package,
             checkpoint, list(ratios), budget, epochs, len(train_set), len(val_set))

    stats = _feature_stats(model, train_set.images)
    aes: list[Autoencoder] = []
    for t in pkg.tasks[:-1]:
        mean, std, nonneg, sample = stats[t.index - 1]
        for r in ratios:
            aes.append(build_autoencoder(t.index, r, t.features_shape, t.macs, mean, std, nonneg, sample))
    _say(f"training {len(aes)} autoencoders ({pkg.num_tasks - 1} boundaries x {len(ratios)} ratios) for {epochs} "
         f"epochs on {len(train_set)} items; log in {package / 'compress.log'}")
    train_autoencoders(model, aes, train_set, epochs, seed, package / STATE_FILE, batch_size, lr, progress=progress)

    _say(f"selecting on {len(val_set)} validation items at thresholds {pkg.default_thresholds}")
    base_logits = compressed_logits(model, val_set.images, {})
    base_acc = evaluate_logits(pkg, base_logits, val_set.labels)["accuracy"]
    rows: list[dict] = []
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

    chosen: dict[int, Autoencoder] = {}
    entries = []
    tmp = Path(tempfile.mkdtemp(prefix=".compress-", dir=package))
    try:
        val_feats, _ = _features_and_logits(model, torch.from_numpy(val_set.images[:PARITY_ITEMS]))
        for ae, row in zip(aes, rows, strict=True):
            name = f"k{ae.after_task}_r{_ratio_key(ae.requested_ratio)}"
            export_codec(ae, tmp, f"enc_{name}.onnx", f"dec_{name}.onnx")
            f = val_feats[ae.after_task - 1].numpy()
            row["parity"] = check_codec_parity(ae, tmp / f"enc_{name}.onnx", tmp / f"dec_{name}.onnx", f)
            row["encoder_ms"], row["decoder_ms"] = time_codec(tmp / f"enc_{name}.onnx", tmp / f"dec_{name}.onnx", f)
        picks = {t.index: _pick(t.index, aes, rows, budget) for t in pkg.tasks[:-1]}
        all_acc = _back_off_jointly(model, pkg, val_set, picks, aes, rows, base_acc, budget)
        for k, (ae, row, within) in picks.items():
            cands = [(a, r) for a, r in zip(aes, rows, strict=True) if a.after_task == k]
            for _, r in cands:
                r["chosen"] = r is row
            row["within_budget"] = within
            chosen[k] = ae
            name = f"k{k}_r{_ratio_key(ae.requested_ratio)}"
            shutil.copy(tmp / f"enc_{name}.onnx", package / f"enc{k}.onnx")
            shutil.copy(tmp / f"dec_{name}.onnx", package / f"dec{k}.onnx")
            losses = {_ratio_key(a.requested_ratio): r["accuracy_cost"] for a, r in cands}
            entries.append(manifest_entry(ae, f"enc{k}.onnx", f"dec{k}.onnx", row, losses, within))
            if not within:
                _say(f"warning: boundary {k}: no ratio within the budget of {budget:.4f}; using the weakest "
                     f"({ae.shape.ratio:.2f}x, cost {row['accuracy_cost']:+.4f})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    _write_manifest(package, entries)

    report = {"package": pkg.name, "checkpoint": str(checkpoint), "budget": budget, "ratios": list(ratios),
              "epochs": epochs, "train_items": len(train_set), "val_items": len(val_set), "seed": seed,
              "thresholds": pkg.default_thresholds, "uncompressed_val_accuracy": base_acc, "boundaries": rows,
              "all_boundaries": {"ratios": {str(k): round(a.shape.ratio, 4) for k, a in chosen.items()},
                                 "uncompressed_val_accuracy": base_acc, "compressed_val_accuracy": all_acc,
                                 "accuracy_cost": round(base_acc - all_acc, 6)}}
    (package / "compression_report.json").write_text(json.dumps(report, indent=1))
    print_report(report)
    log.info("all boundaries compressed: val accuracy %.4f vs %.4f uncompressed", all_acc, base_acc)
    return CompressResult(package, chosen, report, {(a.after_task, a.requested_ratio): a for a in aes})


def _pick(k: int, aes: list[Autoencoder], rows: list[dict], budget: float) -> tuple[Autoencoder, dict, bool]:
    """Boundary k alone: the strongest ratio within the budget (else the weakest). Returns (ae, row, within)."""
    cands = [(ae, row) for ae, row in zip(aes, rows, strict=True) if ae.after_task == k]
    ok = [c for c in cands if c[1]["accuracy_cost"] <= budget + 1e-12]
    ae, row = max(ok, key=lambda c: c[0].shape.ratio) if ok else min(cands, key=lambda c: c[0].shape.ratio)
    return ae, row, bool(ok)


def _back_off_jointly(model: EarlyExitModel, pkg, val_set: Dataset, picks: dict, aes: list[Autoencoder],
                      rows: list[dict], base_acc: float, budget: float) -> float:
    """Costs measured one boundary at a time add up: while every boundary compressed at once costs more than
    the budget, step the boundary with the costliest pick down to its next weaker ratio. Returns the final
    all-boundaries validation accuracy (`picks` is updated in place)."""
    while True:
        codecs = {k: ae for k, (ae, _, _) in picks.items()}
        acc = evaluate_logits(pkg, compressed_logits(model, val_set.images, codecs), val_set.labels)["accuracy"]
        if base_acc - acc <= budget + 1e-12:
            return acc
        steps = []
        for k, (ae, row, _) in picks.items():
            weaker = [(a, r) for a, r in zip(aes, rows, strict=True)
                      if a.after_task == k and a.shape.ratio < ae.shape.ratio]
            if weaker:
                steps.append((row["accuracy_cost"], k, max(weaker, key=lambda c: c[0].shape.ratio)))
        if not steps:
            return acc
        _, k, (a, r) = max(steps, key=lambda s: (s[0], s[1]))
        log.info("all boundaries cost %+.4f > budget: boundary %d backs off to %.2fx", base_acc - acc, k,
                 a.shape.ratio)
        picks[k] = (a, r, r["accuracy_cost"] <= budget + 1e-12)


def _write_manifest(package: Path, entries: list[dict]) -> None:
    """Replace the manifest's `compression` list (everything else unchanged); restore the old manifest if the
    result does not validate."""
    path = package / "manifest.json"
    old = path.read_text()
    m = json.loads(old)
    m["compression"] = entries
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(m, indent=1))
    tmp.replace(path)
    try:
        pkg = load_package(package, check_onnx=True)
        for c in pkg.compression:  # the reader does not open codec files; check their names and shapes here
            out = c.outputs[0]
            _check_io(ort_session(c.encoder), "x", out.name, c.features_shape, out.shape, c.encoder)
            _check_io(ort_session(c.decoder), out.name, "features", out.shape, c.features_shape, c.decoder)
    except PackageError:
        path.write_text(old)
        raise
    log.info("wrote %d compression entries to %s", len(entries), path)


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
    log.info(msg)
    print(f"[compress] {msg}", file=sys.stderr)


def _log_to(path: Path) -> logging.Handler:
    fh = logging.FileHandler(path)
    fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(fh)
    log.setLevel(logging.INFO)
    return fh


__all__ = ["Autoencoder", "CodecShape", "CompressResult", "build_autoencoder", "code_geometry", "compress_package",
           "compressed_logits", "export_codec", "print_report", "train_autoencoders"]
