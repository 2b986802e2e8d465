"""Shifted domains of the brain MRI phantom (``brats-phantom``): a source and two targets for test-time adaptation.

Why: a segmentation model trained on one domain and adapted at test time on another (VISTA, see
``shared/research/tool_methods.md`` section 1) needs targets with two kinds of shift. The first is a
*per-sequence* shift, where each sequence's intensity statistics change on their own. The second is a
*modality-interaction* shift, where the relations between sequences change, such as how much brighter enhancing
tumour is on T1ce than on T1. The three domains mirror the paper's setting: adult glioma (BraTS-GLI) as source,
low-field scanners (BraTS-SSA) and paediatric tumours (BraTS-PED) as targets. Every domain reuses the anatomy,
tumour, contrast and writer of :mod:`macro.data.brain` and changes only the numbers below, so one seed gives the
same tumour in ``source`` and ``lowfield`` (same anatomy and tumour model): a paired comparison.

Pipeline per case (seed s): anatomy (MNI152 zoomed by ``head_zoom`` about the brain centroid, same 99x117x95
grid and affine) -> tumour (``TumourParams``) -> images (``Contrast``: intensities, noise, bias, blur) ->
acquisition (thick slices along z, then per-sequence gamma) -> labels in the domain's convention -> files.

source (``BraTS-GLI-<5 digits>-000``, GLI labels 1 NCR, 2 ED, 3 ET)
    Exactly ``brain-mri-demo``: ``BRATS_CONTRAST`` and the default ``TumourParams``; images and labels equal a
    demo case of the same seed.

lowfield (``BraTS-SSA-<5 digits>-000``, GLI labels), like 0.3-1.5 T scanners in sub-Saharan Africa
    Per-sequence shift:

    - ``noise`` 8 -> 25 (Rician sigma on the 0..1000 scale; T1 WM SNR 100 -> 32 before the slice averaging).
    - ``bias`` 0.08 -> 0.25: the coil inhomogeneity reaches exp(0.25) = +28 % / -22 % instead of about 8 %.
    - ``slice_factor`` 2: pairs of 2 mm axial slices (along z) are averaged into 4 mm slices and linearly
      interpolated back to the 2 mm grid, as a thick-slice 2D acquisition resampled to the BraTS grid. This also
      smooths the noise along z, so the background std ends at about 1.3 x 25 instead of 1.25 x 25.
    - ``gamma`` per sequence, ``1000 * (I / 1000) ** gamma`` after the slice averaging (a different scanner
      intensity response): t1 0.80, t1ce 0.85, t2 1.15, flair 0.90.

    Modality-interaction shift (changed ``Contrast.intensity`` entries; all others as source):

    =============  ======  ========  ================================================
    sequence/class source  lowfield  why
    =============  ======  ========  ================================================
    t1ce ET        1000    700       weaker gadolinium enhancement at low field: the
                                     T1ce/T1 ratio of ET drops from 1.67 to 1.17
    flair ED       950     700       oedema less conspicuous on FLAIR ...
    t2 ED          850     950       ... but brighter on T2, so FLAIR/T2 of oedema
                                     goes from 1.12 to 0.74
    =============  ======  ========  ================================================

    The tumour model is the source one (adult gliomas).

pediatric (``BraTS-PED-<5 digits>-000``, PED labels 1 ET, 2 NET, 3 CC, 4 ED)
    - anatomy: ``head_zoom`` 0.85, so brain volume x 0.61 (MNI152 mask 1883 mL -> about 1160 mL).
    - tumour (``TumourParams``): WT ``wt_ml`` (10, 40) mL instead of (20, 80); ``core_fraction`` (0.5, 0.8)
      instead of (0.25, 0.5) (mostly solid tumour, little oedema); ``necrosis_fraction`` (0.6, 0.9), here the
      non-enhancing share of the core, capped by the one-voxel erosion so ET is a thin rim; ``roughness`` 0.6
      (0.35), ``core_roughness`` 0.3 (0.15), ``grain_mm`` 8 (6), ``elongation`` 0.35 (0.25): more diffuse and
      irregular. Location: centre with WM >= 0.3 (0.6), side-signed x in [-10, 15] mm (either side of, or on,
      the midline; source >= 25), y in [-55, -10] mm (posterior), z in [-30, 12] mm (thalamus, midbrain, pons,
      cerebellar peduncles; source -5..50), coordinates of the zoomed head; ``cross_midline`` True.
    - contrast: the phantom's NCR class plays the non-enhancing tumour (NET). ``tumour_blur_vox`` 0.8 (0.4):
      softer, infiltrative margins. Interaction shift, changed intensities:

    =============  ======  =========  ===============================================
    sequence/class source  pediatric  why
    =============  ======  =========  ===============================================
    t1ce ET        1000    650        barely enhancing: T1ce/T1 of ET 1.67 -> 1.08
    t1 / t1ce NET  250/220 350/380    solid tumour, not necrosis: less dark
    t2 NET         950     900        whole tumour uniformly bright on T2 ...
    t2 ET          700     850
    t2 ED          850     900
    flair NET      650     900        ... and on FLAIR: FLAIR no longer separates the
    flair ET       800     850        core (dark necrosis in source) from the oedema
    flair ED       950     900
    =============  ======  =========  ===============================================

    Labels are written in the BraTS-PED convention: phantom ET -> 1, NCR (as NET) -> 2, ED -> 4; label 3 (cystic
    component) is not generated.

Each case folder holds ``truth.json`` as ``brain-mri-demo`` writes it plus ``domain`` and ``label_convention``;
its ``volumes_ml`` use :data:`macro.data.brats.CONVENTIONS` for that convention.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from macro.case import SEQUENCES
from macro.data import register
from macro.data.brain import (BRATS_CONTRAST, LABELS, Anatomy, Contrast, TumourParams, anatomy_from_maps,
                              load_anatomy, simulate_case, write_case)
from macro.data.brats import CONVENTIONS, PED_LABELS
from macro.errors import CaseError

DATASET = "brats-phantom"
FULL_SCALE = 1000.0  # top of the contrast model's intensity scale; the gamma curve pivots on it
LABEL_NAMES = {"gli": LABELS, "ped": PED_LABELS}
GLI_TO_PED = np.array([0, 2, 4, 1], dtype=np.uint8)  # index = GLI label: NCR -> NET, ED -> ED, ET -> ET


@dataclass(frozen=True)
class Domain:
    """Everything that differs between domains; the module docstring gives the numbers and their reasons."""

    name: str
    prefix: str
    convention: str
    tumour: TumourParams = TumourParams()
    contrast: Contrast = BRATS_CONTRAST
    head_zoom: float = 1.0
    slice_factor: int = 1
    gamma: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SEQUENCES, 1.0))


def _edit(contrast: Contrast, changes: dict[str, dict[str, float]], **fields) -> Contrast:
    """``contrast`` with some sequence/class intensities (and other fields) replaced."""
    intensity = {seq: {**table, **changes.get(seq, {})} for seq, table in contrast.intensity.items()}
    return dataclasses.replace(contrast, intensity=intensity, **fields)


DOMAINS: dict[str, Domain] = {
    "source": Domain("source", "BraTS-GLI", "gli"),
    "lowfield": Domain(
        "lowfield", "BraTS-SSA", "gli",
        contrast=_edit(BRATS_CONTRAST, {"t1ce": {"et": 700.0}, "flair": {"ed": 700.0}, "t2": {"ed": 950.0}},
                       noise=25.0, bias=0.25),
        slice_factor=2,
        gamma={"t1": 0.8, "t1ce": 0.85, "t2": 1.15, "flair": 0.9},
    ),
    "pediatric": Domain(
        "pediatric", "BraTS-PED", "ped",
        tumour=TumourParams(wt_ml=(10.0, 40.0), core_fraction=(0.5, 0.8), necrosis_fraction=(0.6, 0.9),
                            roughness=0.6, core_roughness=0.3, grain_mm=8.0, elongation=0.35,
                            centre_x_mm=(-10.0, 15.0), centre_y_mm=(-55.0, -10.0), centre_z_mm=(-30.0, 12.0),
                            centre_wm=0.3, cross_midline=True),
        contrast=_edit(BRATS_CONTRAST, {
            "t1": {"ncr": 350.0},
            "t1ce": {"ncr": 380.0, "et": 650.0},
            "t2": {"ncr": 900.0, "et": 850.0, "ed": 900.0},
            "flair": {"ncr": 900.0, "et": 850.0, "ed": 900.0},
        }, tumour_blur_vox=0.8),
        head_zoom=0.85,
    ),
}


@functools.cache
def zoomed_anatomy(zoom: float) -> Anatomy:
    """The MNI152 anatomy shrunk (zoom < 1) about its brain centroid on the same grid and affine: a smaller head."""
    adult = load_anatomy()
    if zoom == 1.0:
        return adult
    centre = np.argwhere(adult.brain).mean(axis=0)

    def warp(volume: np.ndarray) -> np.ndarray:
        return ndi.affine_transform(volume, np.full(3, 1.0 / zoom), offset=centre - centre / zoom, order=1)

    return anatomy_from_maps(warp(adult.t1), warp(adult.gm), warp(adult.wm), adult.affine, adult.spacing)


def acquire(images: dict[str, np.ndarray], domain: Domain) -> dict[str, np.ndarray]:
    """The domain's scanner applied to noise-bearing images: thick slices, then a per-sequence gamma."""
    shifted = {}
    for seq, image in images.items():
        if domain.slice_factor > 1:
            image = _thick_slices(image, domain.slice_factor)
        if domain.gamma[seq] != 1.0:
            image = np.float32(FULL_SCALE) * (image / np.float32(FULL_SCALE)) ** np.float32(domain.gamma[seq])
        shifted[seq] = image.astype(np.float32)
    return shifted


def _thick_slices(image: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` neighbouring z slices into one, then interpolate linearly back to the original slices."""
    n = image.shape[-1]
    thick_n = -(-n // factor)
    padded = np.pad(image, [(0, 0)] * (image.ndim - 1) + [(0, thick_n * factor - n)], mode="edge")
    thick = padded.reshape(*image.shape[:-1], thick_n, factor).mean(axis=-1)
    position = np.clip((np.arange(n) - (factor - 1) / 2) / factor, 0, thick_n - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, thick_n - 1)
    weight = (position - low).astype(np.float32)
    return thick[..., low] * (1 - weight) + thick[..., high] * weight


def build_domain_case(folder: Path, seed: int, domain: Domain) -> Path:
    """One case of ``domain`` from ``seed``, written with the domain's label convention and file names."""
    anatomy = zoomed_anatomy(domain.head_zoom)
    labels, images = simulate_case(seed, anatomy, domain.tumour, domain.contrast)
    if domain.convention == "ped":
        labels = GLI_TO_PED[labels]
    return write_case(folder, acquire(images, domain), labels, anatomy, seed, DATASET,
                      names=LABEL_NAMES[domain.convention], regions=CONVENTIONS[domain.convention],
                      extra={"domain": domain.name, "label_convention": domain.convention})


@register(DATASET)
def make_brats_phantom(out: str | Path, n: int = 1, seed: int = 0, domain: str = "source") -> list[Path]:
    """``n`` cases of ``domain`` named like the real challenge (``BraTS-GLI-00007-000``); case ``i`` uses seed
    ``seed + i``, which is also its 5-digit number, so batches with different seeds never collide."""
    spec = DOMAINS.get(domain)
    if spec is None:
        raise CaseError(None, f"unknown domain {domain!r}", accepted=", ".join(DOMAINS))
    if n < 1 or seed < 0 or seed + n > 100_000:
        raise CaseError(None, f"brats-phantom needs n >= 1 and 0 <= seed, seed + n <= 100000; got n={n}, seed={seed}")
    return [build_domain_case(Path(out) / f"{spec.prefix}-{seed + i:05d}-000", seed + i, spec) for i in range(n)]
