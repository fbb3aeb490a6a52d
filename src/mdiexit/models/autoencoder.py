"""Feature autoencoders for task boundaries (DESIGN §5 `compression`): a small conv bottleneck whose 8-bit code
is what travels between nodes.

The encoder is a 1x1 (or stride-s patch) conv C -> c on standardised features, a sigmoid scaled to 0..255 and
8-bit rounding with a straight-through estimator; the decoder undoes the sigmoid on code / 255, convs back to C
channels (pixel shuffle if the encoder downsampled) and un-standardises. Trained by `mdiexit.training.compress`,
exported by `mdiexit.export.export_codec`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mdiexit.models.macs import count_macs

MAX_MAC_FRACTION = 0.10  # encoder + decoder MACs, relative to the task before the boundary
ENCODER_GAIN = 0.5  # initial scale of standardised features into the sigmoid (keeps codes off the rails)


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
    convs when dense 1x1 convs would not fit; the cheapest grouping when none fits: check `macs()`)."""
    c, s = code_geometry(features_shape, ratio)
    g_max = math.gcd(features_shape[0], c)
    limit = MAX_MAC_FRACTION * task_macs
    ae = None
    for g in [d for d in range(1, g_max + 1) if g_max % d == 0]:
        ae = Autoencoder(after_task, ratio, CodecShape(tuple(features_shape), c, s, g), mean, std, relu)
        if sum(ae.macs()) <= limit:
            break
    if sample is not None:
        ae = Autoencoder(after_task, ratio, ae.shape, mean, std, relu, sample)
    return ae
