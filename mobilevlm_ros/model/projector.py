"""MobileVLM's projectors: LDP (V1, `ldpnet`) and LDPv2 (V2, `ldpnetv2`).

Written from the model facts (MOBILEVLM.md). Module and parameter names follow the released
checkpoints (`model.mm_projector.*`) so their state dicts load without renaming:
  LDP:   model.mlp.{1,3}.*, model.mb_block.{1,2}.block.{0.0, 0.1, 1.fc1, 1.fc2, 2.0, 2.1}.*
  LDPv2: mlp.mlp.{0,2}.*, peg.peg.0.*
Shapes: x (B, N, C_vision) with N = h*h patches  ->  (B, ceil(h/2)^2, H).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def _make_divisible(v: float, divisor: int = 8) -> int:
    # MobileNetV3's channel rounding (squeeze-excite width).
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _to_grid(x: torch.Tensor) -> torch.Tensor:
    # (B, h*h, C) -> (B, C, h, h)
    b, n, c = x.shape
    h = math.isqrt(n)
    if h * h != n:
        raise ValueError(f"projector needs a square patch grid, got {n} tokens")
    return x.transpose(1, 2).reshape(b, c, h, h)


def _from_grid(x: torch.Tensor) -> torch.Tensor:
    # (B, C, h, w) -> (B, h*w, C)
    return x.flatten(2).transpose(1, 2)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (timm's LayerNormAct2d without activation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        squeeze = _make_divisible(channels // 4)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s


class InvertedResidual(nn.Module):
    """MobileNetV3 block without the expansion conv: dw3x3 -> LN -> HardSwish -> SE -> pw1x1 -> LN."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.use_residual = stride == 1
        self.block = nn.Sequential(
            nn.Sequential(
                nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False),
                LayerNorm2d(channels, eps=1e-5),
                nn.Hardswish(),
            ),
            SqueezeExcite(channels),
            nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), LayerNorm2d(channels, eps=1e-5)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_residual else y


class LDPBlock(nn.Module):
    def __init__(self, vision_width: int, hidden: int):
        super().__init__()
        # Identity at index 0 keeps the released parameter indices (mlp.1, mlp.3, mb_block.1, mb_block.2).
        self.mlp = nn.Sequential(nn.Identity(), nn.Linear(vision_width, hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden))
        self.mb_block = nn.Sequential(nn.Identity(), InvertedResidual(hidden, 1), InvertedResidual(hidden, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)  # (B, N, H)
        x = self.mb_block(_to_grid(x))  # (B, H, h/2, h/2)
        return _from_grid(x)


class LDPProjector(nn.Module):
    """V1 `ldpnet`."""

    def __init__(self, vision_width: int, hidden: int):
        super().__init__()
        self.model = LDPBlock(vision_width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _FeatureMLP(nn.Module):
    def __init__(self, vision_width: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(vision_width, hidden), nn.GELU(), nn.Linear(hidden, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class _PositionalConv(nn.Module):
    """Positional-encoding generator: depthwise 3x3 conv with bias, plus residual."""

    def __init__(self, hidden: int):
        super().__init__()
        self.peg = nn.Sequential(nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = _to_grid(x)
        return _from_grid(self.peg(grid) + grid)


class LDPv2Projector(nn.Module):
    """V2 `ldpnetv2`: MLP -> 2x2 average pool (24x24 -> 12x12) -> positional conv."""

    def __init__(self, vision_width: int, hidden: int):
        super().__init__()
        self.mlp = _FeatureMLP(vision_width, hidden)
        self.peg = _PositionalConv(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)  # (B, N, H)
        grid = _to_grid(x)
        # The reference's AdaptiveAvgPool2d(12) on 24x24 is exactly a 2x2 average; the explicit
        # pool exports to a plain AveragePool node.
        x = _from_grid(F.avg_pool2d(grid, 2, ceil_mode=True))
        return self.peg(x)


def build_projector(kind: str, vision_width: int, hidden: int) -> nn.Module:
    if kind == "ldpnet":
        return LDPProjector(vision_width, hidden)
    if kind == "ldpnetv2":
        return LDPv2Projector(vision_width, hidden)
    raise ValueError(f"unknown projector {kind!r}")
