"""Source training of the segmentation UNet on the source-domain phantoms (``macro train segmentation``).

DiceCE with sigmoid outputs (lambda_dice = lambda_ce = 1, background included), as in VISTA's source model, on
whole volumes (the fixed 80x96x80 grid), so BatchNorm's running statistics describe whole volumes: test-time
adaptation in train-mode BN then compares like with like (patch-trained statistics made every BN-based method
lose Dice even on the source domain). Deviation for CPU: Adam lr 2e-3 with a cosine schedule for a fixed number
of iterations instead of 100 epochs at lr 1e-5.

Augmentation: left-right flips and an isotropic zoom about the grid centre (``zoom``, drawn per iteration). Why
the zoom: every source phantom shares the one MNI152 head, while real training sets hold heads of many sizes.
Without it the network knew one head size only, and BatchNorm statistics of a smaller head (the paediatric
domain) were out of distribution, so any BN-based adaptation lost Dice there for that reason alone.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from macro.tools.segmentation.model import SegNetConfig, build_unet, save_weights


@dataclass
class SegTrainConfig:
    n_train: int = 32
    n_val: int = 8
    train_seed: int = 1000
    val_seed: int = 5000
    iterations: int = 500
    batch: int = 1
    lr: float = 2e-3
    zoom: tuple[float, float] = (0.8, 1.1)
    seed: int = 0
    net: SegNetConfig = field(default_factory=SegNetConfig)


def _augment(sample, rng: np.random.Generator, zoom: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """A random left-right flip and isotropic zoom of one sample's image (trilinear) and targets (nearest)."""
    import torch
    import torch.nn.functional as F

    img, tgt = torch.from_numpy(sample.image)[None], torch.from_numpy(sample.target)[None]
    scale = float(rng.uniform(*zoom))
    if scale != 1.0:
        theta = torch.zeros(1, 3, 4)
        theta[0, :, :3] = torch.eye(3) / scale
        grid = F.affine_grid(theta, list(img.shape), align_corners=False)
        img = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        tgt = F.grid_sample(tgt, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    if rng.random() < 0.5:
        img, tgt = img.flip(2), tgt.flip(2)
    return img[0].numpy(), tgt[0].numpy()


def train_segmentation(
    out: Path, cfg: SegTrainConfig, data_root: Path, command: str = "macro train segmentation", progress: bool = True
) -> dict:
    import torch
    from monai.losses import DiceCELoss
    from tqdm import tqdm

    from macro.data import make
    from macro.tools.segmentation.data import load_sample
    from macro.tools.segmentation.evaluate import predict_dice

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    train_dirs = make("brats-phantom", data_root / "source-train", n=cfg.n_train, seed=cfg.train_seed, domain="source")
    val_dirs = make("brats-phantom", data_root / "source-val", n=cfg.n_val, seed=cfg.val_seed, domain="source")
    train = [load_sample(d, cfg.net.grid) for d in train_dirs]
    val = [load_sample(d, cfg.net.grid) for d in val_dirs]
    model = build_unet(cfg.net)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=cfg.iterations)
    loss_fn = DiceCELoss(sigmoid=True, lambda_dice=1.0, lambda_ce=1.0)
    start = time.perf_counter()
    losses = []
    bar = tqdm(range(cfg.iterations), desc="train segmentation", disable=not progress, mininterval=5)
    model.train()
    for _ in bar:
        pairs = [_augment(train[rng.integers(len(train))], rng, cfg.zoom) for _ in range(cfg.batch)]
        x = torch.from_numpy(np.stack([p[0] for p in pairs]))
        y = torch.from_numpy(np.stack([p[1] for p in pairs]))
        loss = loss_fn(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    seconds = time.perf_counter() - start
    model.eval()
    held_out = predict_dice(model, val)
    manifest = {
        "name": "segmentation-unet-source",
        "kind": "monai-unet-3d",
        "inputs": ["t1", "t1ce", "t2", "flair"],
        "outputs": ["ET", "TC", "WT"],
        "command": command,
        "seed": cfg.seed,
        "train_config": asdict(cfg),
        "data": {
            "dataset": "brats-phantom",
            "domain": "source",
            "train_seeds": [cfg.train_seed, cfg.train_seed + cfg.n_train - 1],
            "val_seeds": [cfg.val_seed, cfg.val_seed + cfg.n_val - 1],
        },
        "train": {"seconds": round(seconds, 1), "final_loss": round(float(np.mean(losses[-50:])), 4)},
        "held_out_source_dice": held_out,
    }
    return save_weights(model, out, cfg.net, manifest)
