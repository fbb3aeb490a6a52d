"""Early-exit models as a list of tasks (DESIGN §2): task k = backbone segment k + exit head k.

`build_early_exit` is the public way to turn any backbone, given as a list of torch modules, into an
early-exit model: pick the block boundaries, attach a head at each, and count MACs per task.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mdiexit.models.macs import count_macs
from mdiexit.package import float32_bytes


class InputNorm(nn.Module):
    """uint8 (or float 0..255) NCHW -> normalised float. Lives at the start of task 1."""

    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None):
        super().__init__()
        self.register_buffer("scale", torch.zeros(1))
        self.register_buffer("shift", torch.zeros(1))
        self.set(mean or (0.5,), std or (0.5,))
        self.explicit = mean is not None  # False: build_early_exit's default, for `train` to replace

    def set(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Normalise with these per-channel statistics of 0..1 pixels (one value: every channel)."""
        mean, std = list(mean), list(std)
        if len(mean) != len(std):
            mean, std = mean * len(std) if len(mean) == 1 else mean, std * len(mean) if len(std) == 1 else std
        self.scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, -1, 1, 1)
        self.shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)]).view(1, -1, 1, 1)
        self.explicit = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("scale", "shift"):  # the checkpoint's statistics, whatever this instance was built with
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        self.explicit = True
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() * self.scale + self.shift


class ExitHead(nn.Module):
    """A small classifier: 1x1 conv, BN, ReLU, global average pool, linear."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Task(nn.Module):
    """One task: a backbone segment followed by its exit head. Returns (features, logits)."""

    def __init__(self, segment: nn.Module, head: nn.Module):
        super().__init__()
        self.segment = segment
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.segment(x)
        return features, self.head(features)


@dataclass
class TaskInfo:
    index: int
    input_shape: tuple[int, ...]
    features_shape: tuple[int, ...]
    segment_macs: int
    head_macs: int

    @property
    def feature_bytes(self) -> int:
        """float32 bytes per item of this task's output features."""
        return float32_bytes(self.features_shape)


class EarlyExitModel(nn.Module):
    def __init__(self, tasks: Sequence[Task], input_shape: Sequence[int], num_classes: int, arch: str = "custom"):
        super().__init__()
        self.tasks = nn.ModuleList(tasks)
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.arch = arch
        self.placement: list[dict] = []  # how build_early_exit placed the exits (empty: given by hand)

    @property
    def num_exits(self) -> int:
        return len(self.tasks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every exit (training / evaluation runs the whole model)."""
        logits = []
        for task in self.tasks:
            x, out = task(x)
            logits.append(out)
        return logits

    @torch.no_grad()
    def task_info(self) -> list[TaskInfo]:
        """Shapes and counted MACs of each task, from one dummy forward pass."""
        was_training = self.training
        self.eval()
        x = torch.zeros((1, *self.input_shape), dtype=torch.uint8)
        infos = []
        for i, task in enumerate(self.tasks, start=1):
            seg_macs, feats = count_macs(task.segment, x)
            head_macs, _ = count_macs(task.head, feats)
            infos.append(TaskInfo(i, tuple(x.shape[1:]), tuple(feats.shape[1:]), seg_macs, head_macs))
            x = feats
        self.train(was_training)
        return infos


@torch.no_grad()
def block_profile(blocks: Sequence[nn.Module], input_shape: Sequence[int]) -> list[tuple[int, int]]:
    """(MACs, float32 output bytes per item) of each block, from one dummy pass."""
    x = torch.zeros((1, *input_shape))
    out = []
    for b in blocks:
        b.eval()
        macs, x = count_macs(b, x)
        out.append((macs, 4 * x[0].numel()))
    return out


def choose_boundaries(profile: Sequence[tuple[int, int]], targets: Sequence[float] = (0.1, 0.3, 0.6),
                      window: float = 0.06, raw_bytes: int | None = None,
                      mac_tolerance: float = 0.15) -> list[int]:
    """Pick block indices to cut after, one per target fraction of the backbone's MACs.

    Among the blocks whose cumulative MAC fraction lies within `window` of a target, take the one with
    the smallest output features (they cross the network); ties go to the one nearest the target.
    With `raw_bytes` (the raw input's size): when that pick's features are larger than the raw input, a
    boundary within `mac_tolerance` of the target whose features are smaller is taken instead, because
    shipping features larger than the raw item saves nothing (`place_exits` says what happened).
    """
    return [p["block"] for p in place_exits(profile, targets, window, raw_bytes, mac_tolerance)]


def place_exits(profile: Sequence[tuple[int, int]], targets: Sequence[float] = (0.1, 0.3, 0.6),
                window: float = 0.06, raw_bytes: int | None = None, mac_tolerance: float = 0.15) -> list[dict]:
    """`choose_boundaries` with its reasons: per exit, the block, its MAC fraction, feature bytes and a note."""
    total = sum(m for m, _ in profile)
    cum, acc = [], 0
    for m, _ in profile:
        acc += m
        cum.append(acc / total)
    chosen: list[dict] = []
    for t in targets:
        lo = chosen[-1]["block"] + 1 if chosen else 0
        if lo >= len(profile) - 1:
            break  # no block left to cut after
        span = range(lo, len(profile) - 1)
        cands = [i for i in span if abs(cum[i] - t) <= window] or [min(span, key=lambda i: abs(cum[i] - t))]
        best = min(cands, key=lambda i: (profile[i][1], abs(cum[i] - t)))
        note = ""
        if raw_bytes is not None and profile[best][1] > raw_bytes:
            smaller = [i for i in span if abs(cum[i] - t) <= mac_tolerance and profile[i][1] <= raw_bytes]
            if smaller:
                moved = min(smaller, key=lambda i: (abs(cum[i] - t), profile[i][1]))
                note = (f"moved from block {best} ({profile[best][1]} B of features > {raw_bytes} B raw input) to "
                        f"block {moved} ({profile[moved][1]} B), within {mac_tolerance:.0%} of the {t:.0%} MAC target")
                best = moved
            else:
                note = (f"features {profile[best][1]} B > raw input {raw_bytes} B, and no boundary within "
                        f"{mac_tolerance:.0%} of the {t:.0%} MAC target is smaller: shipping them saves nothing")
        chosen.append({"block": best, "mac_fraction": round(cum[best], 4), "feature_bytes": profile[best][1],
                       "raw_bytes": raw_bytes, "target": t, "note": note})
    return chosen


def build_early_exit(
    blocks: Sequence[nn.Module],
    input_shape: Sequence[int],
    num_classes: int,
    final_head: nn.Module,
    cut_after: Sequence[int] | None = None,
    heads: Sequence[nn.Module] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    exit_targets: Sequence[float] = (0.1, 0.3, 0.6),
    arch: str = "custom",
    head_width: int = 128,
) -> EarlyExitModel:
    """Turn a backbone (a list of blocks, applied in order) into an early-exit model.

    blocks:      the backbone, block by block; the model may be cut after any of them.
    final_head:  the backbone's own classifier, applied after the last block (the last exit).
    cut_after:   block indices after which to place an exit; chosen by `choose_boundaries` if omitted.
    heads:       one head module per cut; an `ExitHead` of `head_width` channels at each boundary if omitted.
    mean, std:   per-channel normalisation of 0..1 pixels, folded into task 1 (a pretrained backbone's own).
                 Left unset, `mdiexit train` sets them (--mean/--std, or computed from the training data).
    exit_targets: MAC fractions near which the exits go when `cut_after` is omitted; a boundary whose features
                 are larger than the raw uint8 input is avoided when one within 15 % of the target is smaller
                 (the reasons are in `model.placement`, and export copies them into the manifest).
    """
    blocks = list(blocks)
    placement: list[dict] = []
    if cut_after is None:
        raw = int(math.prod(input_shape))  # uint8 bytes of one raw item
        placement = place_exits(block_profile(blocks, input_shape), exit_targets, raw_bytes=raw)
        cut_after = [p["block"] for p in placement]
    cut_after = sorted(cut_after)
    if cut_after and (cut_after[0] < 0 or cut_after[-1] >= len(blocks) - 1):
        raise ValueError(f"cut_after {cut_after} must lie in 0..{len(blocks) - 2}")
    if heads is not None and len(heads) != len(cut_after):
        raise ValueError(f"{len(heads)} heads for {len(cut_after)} cuts")
    bounds = [-1, *cut_after, len(blocks) - 1]
    shapes = _shapes_after(blocks, input_shape)
    tasks = []
    for k in range(len(bounds) - 1):
        seg = list(blocks[bounds[k] + 1: bounds[k + 1] + 1])
        if k == 0:
            seg.insert(0, InputNorm(mean, std))
        if k == len(bounds) - 2:
            head = final_head
        else:
            head = heads[k] if heads is not None else ExitHead(shapes[bounds[k + 1]][0], num_classes, head_width)
        tasks.append(Task(nn.Sequential(*seg), head))
    model = EarlyExitModel(tasks, input_shape, num_classes, arch)
    model.placement = placement
    return model


@torch.no_grad()
def _shapes_after(blocks: Sequence[nn.Module], input_shape: Sequence[int]) -> list[tuple[int, ...]]:
    x = torch.zeros((1, *input_shape))
    shapes = []
    for b in blocks:
        b.eval()
        x = b(x)
        shapes.append(tuple(x.shape[1:]))
    return shapes
