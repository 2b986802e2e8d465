"""Shifted domains of the brain MRI phantom (``brats-phantom``): a source and two targets for test-time adaptation.

Why: VISTA (``shared/research/tool_methods.md`` section 1) trains a segmentation model on one domain and adapts it
at test time on others. Its targets need two kinds of shift. In a *per-sequence* shift, each sequence's intensity
statistics change on their own. In a *modality-interaction* shift, the relations between sequences change, for
example how much brighter enhancing tumour is on T1ce than on T1. The three domains copy the paper's setting:
adult glioma (BraTS-GLI) as source, and low-field scanners (BraTS-SSA) and paediatric tumours (BraTS-PED) as
targets. Each domain reuses the anatomy, tumour, contrast and writer of :mod:`macro.data.brain` and changes only
the numbers below. ``source`` and ``lowfield`` share anatomy and tumour model, so one seed gives the same label
map in both: a paired comparison in which only the images differ.

Pipeline per case (seed s): anatomy (MNI152 zoomed by ``head_zoom`` about the brain centroid, same 99x117x95
grid and affine) -> tumour (``TumourParams``, tumour stream of s) -> images (``Contrast``: intensities, Rician
noise, bias field, tumour edge blur; image stream of s) -> acquisition (thick slices along z, then a per-sequence
gamma; deterministic) -> labels in the domain's convention -> files and ``truth.json``.

source: ``BraTS-GLI-<5 digits>-000``, GLI labels 1 NCR, 2 ED, 3 ET
    Exactly ``brain-mri-demo`` (``BRATS_CONTRAST``, default ``TumourParams``, head_zoom 1, no acquisition step).
    Images and labels equal those of the demo case with the same seed.

lowfield: ``BraTS-SSA-<5 digits>-000``, GLI labels. Like the 0.3-1.5 T scanners of BraTS-SSA
    The tumour model is the source one (adult gliomas).

    Per-sequence shift:

    ================  ======  ========  ==========================================================================
    parameter         source  lowfield  effect
    ================  ======  ========  ==========================================================================
    ``noise``         8       40        Rician sigma on the 0..1000 scale. After the slice averaging below, the
                                        noise in tissue is 0.56 x 40 = 22 (T1 WM SNR 100 -> about 36)
    ``bias``          0.08    0.25      coil inhomogeneity up to exp(0.25): +28 % / -22 % instead of about 8 %
    ``slice_factor``  1       2         pairs of 2 mm axial slices (z) are averaged into 4 mm slices, then
                                        interpolated linearly back to the grid. This is a thick-slice 2D
                                        acquisition resampled to the BraTS grid: blur and z-correlated noise
    ``gamma`` t1      1       0.80      ``1000 * (I / 1000) ** gamma`` after the slice averaging: a different
    ``gamma`` t1ce    1       0.85      intensity response per sequence. Below 1 it lifts the dark range; above
    ``gamma`` t2      1       1.15      1 it compresses it. The background (noise floor, mean 1.25 x 40 = 50)
    ``gamma`` flair   1       0.90      becomes mean 91 / 78 / 32 / 67, std 21 / 20 / 11 / 18 (source: mean 10, std 5)
    ================  ======  ========  ==========================================================================

    Modality-interaction shift (changed ``Contrast.intensity`` entries; all others as in source):

    ==============  ======  ========  ====================================================================
    sequence/class  source  lowfield  why
    ==============  ======  ========  ====================================================================
    t1ce ET         1000    700       weaker gadolinium enhancement at low field: T1ce/T1 of ET 1.67 -> 1.17
    flair ED        950     700       oedema less conspicuous on FLAIR ...
    t2 ED           850     950       ... and brighter on T2: FLAIR/T2 of oedema 1.12 -> 0.74
    ==============  ======  ========  ====================================================================

pediatric: ``BraTS-PED-<5 digits>-000``, PED labels 1 ET, 2 NET, 3 CC, 4 ED
    Anatomy: ``head_zoom`` 0.85, so brain volume x 0.61 (MNI152 mask 1883 mL -> 1164 mL).

    Tumour (``TumourParams``; unlisted fields as in source):

    ========================  ==============  ==========  ===============================================
    field                     source          pediatric   why
    ========================  ==============  ==========  ===============================================
    ``wt_ml``                 (20, 80)        (6, 24)     smaller: measured WT 12-40 mL over seeds 0-23
                                                          (source 26-72 mL; the shell of oedema around
                                                          the core adds to the nominal volume)
    ``core_fraction``         (0.25, 0.5)     (0.6, 0.9)  mostly solid tumour, less oedema
    ``necrosis_fraction``     (0.2, 0.5)      (0.6, 0.9)  share of the core that does not enhance (NET);
                                                          capped by the one-voxel erosion
    ``enhancing_fraction``    (1, 1)          (0.3, 0.7)  only patches of the rim enhance: a smaller
                                                          share of TC than in source (seed 0: 53 %
                                                          against 80 %)
    ``roughness``             0.35            0.6         more diffuse, infiltrative outline ...
    ``grain_mm``              6               8           ... with coarser lobes
    ``elongation``            0.25            0.35        elongated, as along the brainstem
    ``centre_wm``             0.6             0.3         deep grey nuclei and brainstem are not pure WM
    ``centre_x_mm`` (side*x)  (25, inf)       (-10, 15)   on or near the midline, either side
    ``centre_y_mm``           (-inf, inf)     (-55, -10)  posterior
    ``centre_z_mm``           (-5, 50)        (-30, 12)   low: thalamus, midbrain, pons, cerebellar
                                                          peduncles (zoomed-head coordinates)
    ``cross_midline``         False           True        thalamic and brainstem tumours cross the midline
    ========================  ==============  ==========  ===============================================

    Per-sequence shift (the paediatric centres' own protocols and vendors):

    ================  ======  =========  =======================================================================
    parameter         source  pediatric  effect
    ================  ======  =========  =======================================================================
    ``noise``         8       15         Rician sigma: shorter protocols for children
    ``bias``          0.08    0.15       coil inhomogeneity up to exp(0.15): +16 % / -14 %
    ``gamma`` t1      1       1.15       per-sequence intensity response above 1: the dark range is compressed
    ``gamma`` t1ce    1       1.10
    ``gamma`` t2      1       0.85       ... and below 1 (lifted) on T2
    ``gamma`` flair   1       1.20
    ================  ======  =========  =======================================================================

    Contrast: the phantom's NCR class plays the non-enhancing tumour (NET), solid tumour rather than necrosis.
    ``tumour_blur_vox`` 0.4 -> 0.8 gives softer, infiltrative margins. The interaction shift changes these
    intensities:

    ==============  ======  =========  ==========================================================
    sequence/class  source  pediatric  why
    ==============  ======  =========  ==========================================================
    t1ce ET         1000    800        weaker enhancement: T1ce/T1 of ET 1.67 -> 1.33
    t1 NET          250     300        solid tumour, less dark than necrosis on T1 ...
    t1ce NET        220     300        ... and on T1ce
    t2 NET          950     1000       brighter on T2 ...
    flair NET       650     780        ... and less suppressed on FLAIR: the core's FLAIR/T2 ratio goes
                                       0.68 -> 0.78 and its contrast to oedema on FLAIR halves
    ==============  ======  =========  ==========================================================

    An earlier version also made the core as bright as oedema on T2 and FLAIR and enhancement nearly absent
    (T1ce ET 650, 10-40 % of the rim): the core then differed from oedema by about 100 on T1 and T1ce alone,
    and the source model found no ET and 1 % of TC with or without adaptation. No source-free method can learn a
    cue the source model never used, so that domain measured nothing about adaptation; real BraTS-PED cores stay
    distinct from oedema on T2/FLAIR.

    Labels are written in the BraTS-PED convention: phantom ET -> 1, NCR (as NET) -> 2, ED -> 4. Label 3 (cystic
    component) is not generated.

Each case folder holds ``truth.json`` as ``brain-mri-demo`` writes it, plus ``domain`` and ``label_convention``.
Its ``labels`` names follow the convention, and its ``volumes_ml`` use :data:`macro.data.brats.CONVENTIONS`.
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
from macro.data.brain import (
    BRATS_CONTRAST,
    LABELS,
    Anatomy,
    Contrast,
    TumourParams,
    anatomy_from_maps,
    load_anatomy,
    simulate_case,
    write_case,
)
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
        "lowfield",
        "BraTS-SSA",
        "gli",
        contrast=_edit(
            BRATS_CONTRAST, {"t1ce": {"et": 700.0}, "flair": {"ed": 700.0}, "t2": {"ed": 950.0}}, noise=40.0, bias=0.25
        ),
        slice_factor=2,
        gamma={"t1": 0.8, "t1ce": 0.85, "t2": 1.15, "flair": 0.9},
    ),
    "pediatric": Domain(
        "pediatric",
        "BraTS-PED",
        "ped",
        tumour=TumourParams(
            wt_ml=(6.0, 24.0),
            core_fraction=(0.6, 0.9),
            necrosis_fraction=(0.6, 0.9),
            enhancing_fraction=(0.3, 0.7),
            roughness=0.6,
            grain_mm=8.0,
            elongation=0.35,
            centre_x_mm=(-10.0, 15.0),
            centre_y_mm=(-55.0, -10.0),
            centre_z_mm=(-30.0, 12.0),
            centre_wm=0.3,
            cross_midline=True,
        ),
        contrast=_edit(
            BRATS_CONTRAST,
            {
                "t1": {"ncr": 300.0},
                "t1ce": {"ncr": 300.0, "et": 800.0},
                "t2": {"ncr": 1000.0},
                "flair": {"ncr": 780.0},
            },
            tumour_blur_vox=0.8,
            noise=15.0,
            bias=0.15,
        ),
        head_zoom=0.85,
        gamma={"t1": 1.15, "t1ce": 1.1, "t2": 0.85, "flair": 1.2},
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
    return write_case(
        folder,
        acquire(images, domain),
        labels,
        anatomy,
        seed,
        DATASET,
        names=LABEL_NAMES[domain.convention],
        regions=CONVENTIONS[domain.convention],
        extra={"domain": domain.name, "label_convention": domain.convention},
    )


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
