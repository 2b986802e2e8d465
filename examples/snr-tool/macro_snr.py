"""An example MACRO plug-in: the signal-to-noise ratio of a scan, from an Otsu split into foreground and background.

Everything the agent needs comes from one decorated function: its name, its docstring's first line (the description
the policy reads), its parameters (none besides the case, so the policy sets no arguments), the spec given to
``@tool`` (any modality, 2D or 3D; requests users make, in several styles and languages; the example scans it is
trained on) and a result with a one-sentence headline. ``pip install -e examples/snr-tool`` registers it; ``macro
tools list`` then warns that the embedded policy was not trained on it until ``macro train sft`` has run.
"""

from __future__ import annotations

import numpy as np

from macro.case import Case
from macro.tools.base import ANY_MODALITY, ToolResult
from macro.tools.decorator import tool


def otsu(values: np.ndarray, bins: int = 256) -> float:
    """The threshold that maximises the between-class variance of a 1D sample."""
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts)
    mean = np.cumsum(counts * centres)
    total, grand = weight[-1], mean[-1]
    below, above = weight[:-1], total - weight[:-1]
    valid = (below > 0) & (above > 0)
    between = np.zeros_like(centres[:-1], dtype=float)
    mu0 = mean[:-1][valid] / below[valid]
    mu1 = (grand - mean[:-1][valid]) / above[valid]
    between[valid] = below[valid] * above[valid] * (mu0 - mu1) ** 2
    return float(edges[1:][:-1][int(np.argmax(between))])


@tool(
    modalities=(ANY_MODALITY,),
    outputs={"snr": "scalar"},
    version="0.1.0",
    deterministic=True,
    cases=(
        "wheel:pydicom/data/test_files/CT_small.dcm",
        "wheel:nibabel/tests/data/anatomical.nii",
        "brain-mri-demo",
    ),
    examples=(
        "What is the signal-to-noise ratio?",
        "How noisy is this image?",
        "Estimate the SNR.",
        "Is the image quality good enough, noise-wise?",
        "snr?",
        "Measure the noise level of the scan.",
        "Give me the SNR of this acquisition.",
        "how grainy is this picture",
        "Quantify the image noise.",
        "Signal to noise, please.",
        "Check the noise in this scan.",
        "Is there a lot of noise?",
        "What's the noise like?",
        "Compute the signal-to-noise ratio of the study.",
        "Wie ist das Signal-Rausch-Verhältnis?",
        "Quel est le rapport signal sur bruit ?",
        "¿Cuánto ruido tiene la imagen?",
        "Qual è il rapporto segnale-rumore?",
        "noise level",
        "Rate the image noise for me.",
        "Is this scan noisy?",
        "SNR of the image, please.",
        "How clean is the signal in this image?",
        "Evaluate the noise of this acquisition.",
        "Tell me the SNR.",
    ),
)
def estimate_snr(case: Case) -> ToolResult:
    """Signal-to-noise ratio of the scan: foreground mean over background noise (Otsu split)."""
    image = np.asarray(case.image, dtype=np.float64)
    values = image.reshape(-1)
    threshold = otsu(values)
    signal, background = values[values > threshold], values[values <= threshold]
    noise = float(background.std())
    snr = float((signal.mean() - background.mean()) / noise) if noise > 0 and signal.size else float("inf")
    headline = (
        f"The signal-to-noise ratio is {snr:.1f} (foreground mean {signal.mean():.1f}, background mean "
        f"{background.mean():.1f} with standard deviation {noise:.1f}; Otsu split at {threshold:.1f})."
    )
    return ToolResult(
        text=headline,
        headline=headline,
        data={"snr": round(snr, 2), "threshold": round(threshold, 2), "noise_sd": round(noise, 2)},
    )
