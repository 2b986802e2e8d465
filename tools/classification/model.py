"""The classification network: an ImageNet EfficientNet-Lite0, split into a frozen trunk and a trainable top.

Why this shape: FedLSM and FCU fine-tune an ImageNet DenseNet-121 end to end on GPUs. On 2 CPU cores, 50 rounds
of that would take hours, so the 16 MBConv blocks stay frozen at their ImageNet weights and their output (320 x
3 x 3 maps at 96 px) is computed once per image and view (:class:`FeatureBank`). The top (the 1x1 head conv
320 -> 1280 with its BatchNorm, and a new linear classifier) trains federatedly on those cached maps: 0.42 M
trainable parameters, a conv kernel and a classifier matrix, so FCU's frequency fusion and its contrastive
feature loss act on the same kinds of weights as in the paper. (Training the last MBConv block too made a local
iteration about 20x slower for no change in the method.)

Deviations, each for CPU: EfficientNet-Lite0 (the ImageNet encoder that ships offline) instead of DenseNet-121;
96x96 inputs instead of 224/320; frozen trunk; augmentations are drawn once per image into a bank of views
(weak = identity and horizontal flip, strong = ``n_strong`` random draws of the strong pipeline) instead of anew
at every iteration. The classifier takes the pooled 1280-d feature after ReLU6, as the paper's head takes the
pooled DenseNet feature after ReLU; its bias starts at zero.

ImageNet normalisation (mean 0.485/0.456/0.406, std 0.229/0.224/0.225) is applied to [0, 1] RGB input; greyscale
X-rays are replicated to three channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from macro import imagenet, weights
from macro.imagenet import Trunk, resize
from macro.tools import ood

IMAGE_SIZE = 96
SPLIT_BLOCK = imagenet.DEPTH  # every MBConv block frozen (320 channels at stride 32); the 1x1 head conv trains
FEATURE_DIM = 1280
TASK_MODALITY = {"derm": "dermoscopy", "cxr": "xray"}
FILE = "top.safetensors"
SHIPPED = Path(__file__).parent / "weights"
SLOTS = {
    task: weights.slot(f"classification/{task}", SHIPPED / task, f"macro fl train --task {task}")
    for task in TASK_MODALITY
}


class Classifier(nn.Module):
    """Trainable top: blocks[SPLIT_BLOCK:], head conv, BN, ReLU6, pooling, then ``head`` (Linear 1280 -> C).

    ``forward(z)`` takes trunk maps and returns ``(feature, logits)``, the contract of the federated methods."""

    def __init__(self, n_classes: int, backbone=None):
        super().__init__()
        backbone = backbone if backbone is not None else imagenet.backbone()
        self.blocks = nn.ModuleList(backbone._blocks[SPLIT_BLOCK:])
        self.conv_head, self.bn1, self.act = backbone._conv_head, backbone._bn1, backbone._swish
        self.head = nn.Linear(FEATURE_DIM, n_classes)
        nn.init.zeros_(self.head.bias)

    def features(self, z: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            z = block(z)
        return self.act(self.bn1(self.conv_head(z))).mean(dim=(2, 3))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature = self.features(z)
        return feature, self.head(feature)


@dataclass
class AugmentConfig:
    """FedLSM's strong view: flips, brightness ±0.2, one of median blur / Gaussian blur / Gaussian noise, and
    shift-scale-rotate (0.1, 0.1, 15°)."""

    brightness: float = 0.2
    shift: float = 0.1
    scale: float = 0.1
    rotate_deg: float = 15.0
    noise_std: float = 0.03


def strong_view(x: torch.Tensor, generator: torch.Generator, cfg: AugmentConfig = AugmentConfig()) -> torch.Tensor:
    """One random draw of the strong augmentation for a batch (N, 3, H, W) in [0, 1]."""
    n = x.shape[0]

    def uniform(lo: float, hi: float, size=(n,)) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(size, generator=generator)

    flip_h = torch.rand(n, generator=generator) < 0.5
    flip_v = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip_h.view(-1, 1, 1, 1), x.flip(-1), x)
    x = torch.where(flip_v.view(-1, 1, 1, 1), x.flip(-2), x)
    x = x + uniform(-cfg.brightness, cfg.brightness).view(-1, 1, 1, 1)
    choice = torch.randint(3, (n,), generator=generator)
    blurred = nn.functional.avg_pool2d(nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    patches = nn.functional.unfold(nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), 3).view(n, 3, 9, *x.shape[-2:])
    median = patches.median(dim=2).values
    noisy = x + cfg.noise_std * torch.randn(x.shape, generator=generator)
    x = torch.where(
        (choice == 0).view(-1, 1, 1, 1), median, torch.where((choice == 1).view(-1, 1, 1, 1), blurred, noisy)
    )
    angle = torch.deg2rad(uniform(-cfg.rotate_deg, cfg.rotate_deg))
    scale = uniform(1 - cfg.scale, 1 + cfg.scale)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle) / scale, -torch.sin(angle) / scale
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle) / scale, torch.cos(angle) / scale
    theta[:, :, 2] = uniform(-2 * cfg.shift, 2 * cfg.shift, (n, 2))
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return nn.functional.grid_sample(x, grid, padding_mode="reflection", align_corners=False).clamp(0, 1)


class FeatureBank:
    """Trunk maps of every image for a fixed set of views: 0 = as is, 1 = horizontal flip, 2.. = strong draws.

    Stored in float16 (half the memory; the maps are post-activation values of moderate range). ``weak(idx)``
    picks view 0 or 1 at random, ``strong(idx)`` one of the strong views, as the federated methods expect."""

    def __init__(
        self, trunk: Trunk, images: np.ndarray, n_strong: int = 2, seed: int = 0, batch: int = 128, progress=None
    ):
        self.generator = torch.Generator().manual_seed(seed)
        views = []
        for v in range(2 + n_strong):
            maps = []
            for start in range(0, len(images), batch):
                x = resize(images[start : start + batch], IMAGE_SIZE)
                x = x if v == 0 else x.flip(-1) if v == 1 else strong_view(x, self.generator)
                maps.append(trunk(x).to(torch.float16))
                if progress:
                    progress(len(images[start : start + batch]))
            views.append(torch.cat(maps))
        self.views = torch.stack(views)  # (V, N, C, h, w)

    def __len__(self) -> int:
        return self.views.shape[1]

    def view(self, index: int, idx: np.ndarray) -> torch.Tensor:
        return self.views[index, torch.as_tensor(idx)].float()

    def weak(self, idx: np.ndarray) -> torch.Tensor:
        return self._pick(idx, torch.randint(2, (len(idx),), generator=self.generator))

    def strong(self, idx: np.ndarray) -> torch.Tensor:
        return self._pick(idx, 2 + torch.randint(self.views.shape[0] - 2, (len(idx),), generator=self.generator))

    def _pick(self, idx: np.ndarray, view: torch.Tensor) -> torch.Tensor:
        return self.views[view, torch.as_tensor(idx)].float()


def save_classifier(
    model: Classifier, folder: Path, manifest: dict, density: ood.Density | None = None, before_commit=None
) -> dict:
    """The trainable top in fp16 safetensors (the trunk is the shipped ImageNet encoder), the out-of-distribution
    check when given, and the manifest (``before_commit``: see :func:`macro.weights.write`)."""
    backbone = f"efficientnet-lite0 (ImageNet), blocks[:{SPLIT_BLOCK}] frozen"
    tensors = {FILE: model.state_dict()}
    extra = {"backbone": backbone, "image_size": IMAGE_SIZE}
    if density is not None:
        tensors[ood.FILE] = density.tensors()
        extra["ood"] = {**manifest.get("ood", {}), **density.info(), "feature": ood.describe(IMAGE_SIZE)}
    return weights.save_tensors(folder, tensors, {**manifest, **extra}, before_commit)


def load_classifier(task: str, folder: Path | None = None) -> tuple[Classifier, dict]:
    """A task's trained top (fp32, eval mode) and its manifest; the active copy unless ``folder`` is given."""
    slot = SLOTS[task]
    manifest, states = weights.load_tensors(folder or slot.active(), slot.regenerate, (FILE,))
    model = Classifier(len(manifest["classes"]))
    model.load_state_dict(states[FILE])
    return model.eval(), manifest


def load_ood(task: str, folder: Path | None = None) -> ood.Density | None:
    """A task's out-of-distribution check, or None for weights made before it existed."""
    slot = SLOTS[task]
    return ood.load(folder or slot.active(), slot.regenerate)
