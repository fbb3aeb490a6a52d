"""MobileNetV2 (Sandler et al. 2018) with a small-image stem, as a list of blocks for early exits."""

from __future__ import annotations

from torch import nn


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [] if expand == 1 else [conv_bn(cin, hidden, 1)]
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, cout, 1, act=False)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


# (expansion t, channels c, repeats n, first stride s). Small-image variant: the stem and the first
# stage keeps the full resolution (28x28 or 32x32 input); three stages downsample, ending at 4x4.
SMALL_IMAGE_CONFIG = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 1), (6, 64, 4, 2), (6, 96, 3, 1),
                      (6, 160, 3, 2), (6, 320, 1, 1)]


def mobilenetv2_blocks(in_channels: int, num_classes: int, width: float = 1.0,
                       config: list[tuple[int, int, int, int]] | None = None,
                       image_size: int = 28) -> tuple[list[nn.Module], nn.Module]:
    """Return (blocks, final_head). Each inverted-residual block is one possible cut point."""
    def ch(c: int) -> int:
        return max(8, int(round(c * width / 8)) * 8)

    cin = ch(32)
    # Larger inputs (camera frames) are brought down to the small-image resolution (<= 32) early: the stem,
    # then the first stage, each stride 2, as in the ImageNet MobileNetV2. 28x28 and 32x32 keep stride 1.
    early = [1, 1]
    size = image_size
    for i in range(2):
        if size > 32:
            early[i], size = 2, (size + 1) // 2
    blocks: list[nn.Module] = [conv_bn(in_channels, cin, 3, early[0])]
    for stage, (t, c, n, s) in enumerate(config or SMALL_IMAGE_CONFIG):
        for i in range(n):
            stride = (early[1] if stage == 0 else s) if i == 0 else 1
            blocks.append(InvertedResidual(cin, ch(c), stride, t))
            cin = ch(c)
    last = max(1280, ch(1280)) if width > 1.0 else 1280
    blocks.append(conv_bn(cin, last, 1))
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(last, num_classes))
    return blocks, head
