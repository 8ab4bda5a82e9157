"""A 3D U-Net written for this project: one sigmoid channel per tumour region.

Reads like the diagram: an encoder of `Down` stages (strided conv + conv), a decoder of `Up` stages
(transposed conv, concatenate the skip, two convs) and 1×1×1 heads. Widths double per level from
`base_width` up to `max_width`, so `base_width=32, max_width=320, depth=6` is nnU-Net's 3D full-res
network and the defaults in params.yaml are a small CPU model. Output channels follow `brats.MODEL_REGIONS`.
"""

from __future__ import annotations

import torch
from torch import nn

from brats import MODALITIES, MODEL_REGIONS
from params import ModelParams


def widths(config: ModelParams) -> list[int]:
    """Channels per level: doubling from base_width, capped at max_width."""
    return [min(config.base_width * 2 ** i, config.max_width) for i in range(config.depth)]


class InstanceNorm3d(nn.InstanceNorm3d):
    """nn.InstanceNorm3d (affine, no running statistics) that keeps a channels-last CPU activation
    channels-last: PyTorch's instance-norm kernel copies it to contiguous and back, which cost more
    than the layout saved on a CPU (bench/cpu.py). There it runs as a group norm with one group per
    channel, which is the same function, in PyTorch's group-norm kernel, which works channels-last:
    eager 1.2x (train step) and 1.4x (predict) faster than a var_mean form, compiled the same
    (BENCHMARKS.md, "CPU"). The result equals the instance-norm kernel's to float rounding (tested,
    with gradients), and the parameters (and state_dict keys) are the same. Every other input takes
    PyTorch's instance-norm kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda or x.dim() != 5 or not x.is_contiguous(memory_format=torch.channels_last_3d):
            return super().forward(x)
        return nn.functional.group_norm(x, self.num_features, self.weight, self.bias, self.eps)


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return InstanceNorm3d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.BatchNorm3d(channels)


class ConvNormAct(nn.Sequential):
    """3×3×3 convolution, normalisation, LeakyReLU(0.01) (nnU-Net's block)."""

    def __init__(self, cin: int, cout: int, norm: str, stride: int = 1):
        # no conv bias: the normalisation that follows removes it anyway
        super().__init__(nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         make_norm(norm, cout), nn.LeakyReLU(0.01, inplace=True))


class TwoConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, norm: str, stride: int = 1):
        super().__init__(ConvNormAct(cin, cout, norm, stride), ConvNormAct(cout, cout, norm))


class Up(nn.Module):
    """Upsample ×2 with a transposed conv, concatenate the skip, then two convs."""

    def __init__(self, cin: int, cskip: int, cout: int, norm: str):
        super().__init__()
        self.up = nn.ConvTranspose3d(cin, cskip, 2, stride=2, bias=False)
        self.convs = TwoConv(2 * cskip, cout, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)                                      # (B, Cskip, ~2D, ~2H, ~2W)
        if x.shape[2:] != skip.shape[2:]:
            # odd sizes: a stride-2 conv rounds up, so the upsampled map can be one voxel larger
            x = x[..., : skip.shape[2], : skip.shape[3], : skip.shape[4]]
        return self.convs(torch.cat([skip, x], dim=1))


class UNet3D(nn.Module):
    def __init__(self, config: ModelParams):
        super().__init__()
        self.config = config
        w = widths(config)
        self.stem = TwoConv(len(MODALITIES), w[0], config.norm)
        self.downs = nn.ModuleList(TwoConv(w[i - 1], w[i], config.norm, stride=2) for i in range(1, len(w)))
        self.ups = nn.ModuleList(Up(w[i], w[i - 1], w[i - 1], config.norm) for i in range(len(w) - 1, 0, -1))
        # heads[0] is full resolution; the others exist for deep supervision only
        n_heads = len(w) - 1 if config.deep_supervision else 1
        self.heads = nn.ModuleList(nn.Conv3d(w[i], len(MODEL_REGIONS), 1) for i in range(n_heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """(B, 4, D, H, W) -> logits (B, R, D, H, W); with deep supervision while training, a list
        of logits from full resolution down to 1/2^(depth-2)."""
        skips = [self.stem(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        decoded = []
        for up in self.ups:
            x = up(x, skips.pop())
            decoded.append(x)                               # coarse to fine
        decoded.reverse()                                   # fine to coarse
        if self.config.deep_supervision and self.training:
            return [head(f) for head, f in zip(self.heads, decoded)]
        return self.heads[0](decoded[0])
