"""Brain MRI phantom: four BraTS sequences and a glioma-like tumour on real MNI152 anatomy, offline and seeded.

Why: tests, demos and evals need a multi-sequence brain case with an exact reference segmentation, without a
download or a data licence. The anatomy comes from the MNI152 templates inside the nilearn wheel; everything else
is drawn from ``numpy.random.default_rng(seed)``, so one seed gives byte-identical files. The pieces (anatomy,
tumour, contrasts, writer) are separate so shifted domains can swap one of them and keep the rest.

Anatomy (:func:`load_anatomy`)
    MNI152 T1 template and its GM/WM probability maps at 2 mm (99x117x95 voxels, MNI affine). Brain = T1 > 0.2
    (nilearn's own mask rule); CSF = brain - GM - WM clipped to [0, 1]; every map is zero outside the brain, as in
    a skull-stripped BraTS case. ``texture`` = template T1 / T1 expected from the tissue fractions, clipped to
    [0.75, 1.25]: the anatomy the tissue classes miss (deep grey nuclei, tracts, sulcal detail).

Tumour model (:class:`TumourParams`, :func:`make_tumour`), labels in the BraTS 2023 convention
    1 = NCR (necrotic core), 2 = ED (peritumoral oedema), 3 = ET (enhancing tumour);
    regions ET = {3}, TC = {1, 3}, WT = {1, 2, 3}.

    - hemisphere: left or right with equal odds; the tumour never crosses the midline (x = 0 mm) unless
      ``cross_midline`` (False).
    - centre: a random parenchyma voxel with WM >= ``centre_wm`` (0.6), ``side * x`` in ``centre_x_mm`` = (25, inf),
      y in ``centre_y_mm`` = (-inf, inf), z in ``centre_z_mm`` = (-5, 50) mm (cerebrum) and at least half the
      nominal radius from the brain surface. Signed x lets a shifted domain put the centre near or across the
      midline; the defaults reproduce the original rule ``|x| >= 25 mm``.
    - WT volume V: log-uniform in ``wt_ml`` = (20, 80) mL; nominal radius r = (3 V / 4 pi)^(1/3). The shell that
      guarantees oedema around the core adds a little: 23-91 mL over seeds 0-119.
    - shape score: d + roughness * n, with d the distance to the centre in an ellipsoid of random orientation
      (axis ratios uniform in 1 -/+ ``elongation`` = 0.25, volume-preserving) in units of r, and n smooth noise
      (white noise blurred with sigma ``grain_mm`` = 6 mm, unit variance, a fresh field per compartment). A
      compartment takes the allowed voxels with the lowest score, as many as its volume asks.
    - TC: ``core_fraction`` = U(0.25, 0.5) of the WT volume, compact (``core_roughness`` = 0.15), inside the
      hemisphere's parenchyma (GM + WM >= 0.5) eroded by one voxel; largest connected part.
    - NCR: ``necrosis_fraction`` = U(0.2, 0.5) of TC, inside TC eroded by one voxel (26-neighbourhood), so ET is
      a closed rim at least 2 mm thick around the necrosis; largest connected part.
    - ET: that rim, all of it by default (``enhancing_fraction`` = (1, 1)). With a share U(lo, hi) < 1 (a barely
      enhancing tumour) only that share enhances, in smooth patches (the rim voxels lowest in a fresh noise field
      of sigma ``grain_mm``), and the rest joins the non-enhancing core, label 1. It is drawn last, so the other
      compartments stay as they would be without it.
    - WT: the WT-volume lowest voxels of the parenchyma for an irregular score (``roughness`` = 0.35) minus
      ``oedema_wm_bias`` * WM (0.3), so oedema spreads along white matter; joined with TC dilated by one voxel so
      oedema surrounds the core everywhere; the connected part that holds TC.

Contrast model (:class:`Contrast`, :func:`synthesize_sequences`), signal on a 0..1000 scale
    Every voxel mixes six classes. Tumour classes weigh by their label map blurred with sigma ``tumour_blur_vox``
    = 0.4 voxel (W = their sum); CSF, GM and WM by their probability times (1 - W). Per sequence::

        signal = sum(fraction * intensity) * texture ** (gamma * P) * (1 + heterogeneity * W * n) * bias
        image  = | signal + noise * (e1 + i e2) |          e1, e2 ~ N(0, 1)  (Rician; background ~1.25 * noise)

    P = the GM + WM fraction, so texture shapes healthy parenchyma only and CSF and tumour stay flat;
    ``bias`` = exp(``bias`` * p / max|p|), p a random quadratic polynomial of the voxel position (0.08: about 8 %
    at most); ``heterogeneity`` = 0.08 with n unit smooth noise (sigma 1.5 voxel); ``noise`` = 8.

    ===========  ====  ====  ====  ====  ====  ====  =====
    sequence     CSF   GM    WM    NCR   ED    ET    gamma
    ===========  ====  ====  ====  ====  ====  ====  =====
    t1  (t1n)    200   550   800   250   480   600    1.0
    t1ce (t1c)   180   500   700   220   450   1000   1.0
    t2  (t2w)    1000  650   450   950   850   700   -0.8
    flair (t2f)  100   600   450   650   950   800   -0.5
    ===========  ====  ====  ====  ====  ====  ====  =====
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from macro.case import SEQUENCE_SUFFIXES, SEQUENCES
from macro.data import register
from macro.errors import CaseError

DATASET = "brain-mri-demo"
VERSION = 1  # bump when the generator changes so cached demo cases are rebuilt
CLASSES = ("csf", "gm", "wm", "ncr", "ed", "et")
LABELS = {1: "NCR", 2: "ED", 3: "ET"}
REGIONS = {"ET": (3,), "TC": (1, 3), "WT": (1, 2, 3)}
CUBE = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class Anatomy:
    """MNI152 tissue maps on one grid. Arrays are read-only: the instance is cached and shared."""

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    texture: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.t1.shape

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def parenchyma(self) -> np.ndarray:
        """Brain tissue a tumour may occupy: not CSF-dominated (ventricles, sulci)."""
        return self.brain & (self.gm + self.wm >= 0.5)


@functools.cache
def load_anatomy() -> Anatomy:
    """Load the 2 mm MNI152 templates shipped inside nilearn (no network) once per process."""
    from nilearn import datasets

    template = datasets.load_mni152_template(resolution=2)
    gm = datasets.load_mni152_gm_template(resolution=2).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=2).get_fdata(dtype=np.float32)
    spacing = tuple(float(z) for z in template.header.get_zooms()[:3])
    return anatomy_from_maps(template.get_fdata(dtype=np.float32), gm, wm, np.asarray(template.affine), spacing)


def anatomy_from_maps(
    t1: np.ndarray, gm: np.ndarray, wm: np.ndarray, affine: np.ndarray, spacing: tuple[float, ...]
) -> Anatomy:
    """Brain mask, CSF and texture derived from T1 and GM/WM maps, so a warped template gives a consistent anatomy."""
    brain = t1 > 0.2
    gm = np.where(brain, np.clip(gm, 0, 1), 0)
    wm = np.where(brain, np.clip(wm, 0, 1), 0)
    csf = np.where(brain, np.clip(1 - gm - wm, 0, 1), 0)
    means = [float((p * t1).sum() / p.sum()) for p in (csf, gm, wm)]
    expected = csf * means[0] + gm * means[1] + wm * means[2]
    texture = np.ones_like(t1)
    texture[brain] = np.clip(t1[brain] / np.maximum(expected[brain], 1e-3), 0.75, 1.25)
    arrays = {"t1": t1, "gm": gm, "wm": wm, "csf": csf, "brain": brain, "texture": texture}
    for name, arr in arrays.items():
        arrays[name] = arr.astype(bool if name == "brain" else np.float32)
        arrays[name].setflags(write=False)
    affine = np.array(affine, dtype=np.float64)
    affine.setflags(write=False)
    return Anatomy(affine=affine, spacing=tuple(spacing), **arrays)


# ---------------------------------------------------------------- tumour


@dataclass(frozen=True)
class TumourParams:
    """Size and shape ranges of the tumour; see the module docstring for their meaning."""

    wt_ml: tuple[float, float] = (20.0, 80.0)
    core_fraction: tuple[float, float] = (0.25, 0.5)
    necrosis_fraction: tuple[float, float] = (0.2, 0.5)
    roughness: float = 0.35
    core_roughness: float = 0.15
    grain_mm: float = 6.0
    elongation: float = 0.25
    oedema_wm_bias: float = 0.3
    enhancing_fraction: tuple[float, float] = (1.0, 1.0)
    centre_x_mm: tuple[float, float] = (25.0, np.inf)
    centre_y_mm: tuple[float, float] = (-np.inf, np.inf)
    centre_z_mm: tuple[float, float] = (-5.0, 50.0)
    centre_wm: float = 0.6
    cross_midline: bool = False


def make_tumour(rng: np.random.Generator, anatomy: Anatomy, params: TumourParams = TumourParams()) -> np.ndarray:
    """A uint8 BraTS label map (1 NCR, 2 ED, 3 ET) of one irregular tumour in the parenchyma (of one hemisphere
    unless ``params.cross_midline``)."""
    world = _world_coordinates(anatomy)
    side = float(rng.choice((-1.0, 1.0)))
    wt_ml = float(np.exp(rng.uniform(*np.log(params.wt_ml))))
    radius = (3.0 * wt_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    centre = _pick_centre(rng, anatomy, world, side, radius, params)
    distance = _ellipsoid_distance(rng, world, centre, radius, params.elongation)
    grain = params.grain_mm / np.asarray(anatomy.spacing)

    def score(roughness: float) -> np.ndarray:
        return distance + roughness * _smooth_noise(rng, anatomy.shape, grain)

    allowed = anatomy.parenchyma if params.cross_midline else anatomy.parenchyma & (side * world[0] > 0)
    wt_voxels = round(wt_ml / anatomy.voxel_ml)
    tc_voxels = round(rng.uniform(*params.core_fraction) * wt_voxels)
    tc = _largest_part(_lowest(score(params.core_roughness), ndi.binary_erosion(allowed, CUBE), tc_voxels))
    ncr_voxels = round(rng.uniform(*params.necrosis_fraction) * tc.sum())
    ncr = _largest_part(_lowest(score(params.core_roughness), ndi.binary_erosion(tc, CUBE), ncr_voxels))
    if not ncr.any():
        raise ValueError(f"tumour too small for three compartments ({params})")
    oedema = _lowest(score(params.roughness) - params.oedema_wm_bias * anatomy.wm, allowed, wt_voxels)
    wt = _part_containing(oedema | ndi.binary_dilation(tc, CUBE), tc)
    if params.enhancing_fraction != (1.0, 1.0):
        ncr = ncr | _non_enhancing_rim(rng, tc & ~ncr, params.enhancing_fraction, grain)
    labels = np.zeros(anatomy.shape, dtype=np.uint8)
    labels[wt] = 2
    labels[tc] = 3
    labels[ncr] = 1
    return labels


def _non_enhancing_rim(
    rng: np.random.Generator, rim: np.ndarray, fraction: tuple[float, float], grain: np.ndarray
) -> np.ndarray:
    """The rim voxels that do not enhance: all but a random share, which enhances in smooth patches."""
    enhancing = round(rng.uniform(*fraction) * rim.sum())
    return rim & ~_lowest(_smooth_noise(rng, rim.shape, grain), rim, enhancing)


def _world_coordinates(anatomy: Anatomy) -> np.ndarray:
    """(3, X, Y, Z) scanner coordinates in mm; MNI puts the midline at x = 0."""
    grid = np.indices(anatomy.shape, dtype=np.float32)
    return np.tensordot(anatomy.affine[:3, :3].astype(np.float32), grid, axes=1) + anatomy.affine[
        :3, 3, None, None, None
    ].astype(np.float32)


def _pick_centre(
    rng: np.random.Generator, anatomy: Anatomy, world: np.ndarray, side: float, radius: float, params: TumourParams
) -> np.ndarray:
    """A white-matter point inside the params' box (side-signed x), deep enough for a tumour of ``radius``."""
    depth = ndi.distance_transform_edt(anatomy.brain, sampling=anatomy.spacing)
    ok = (anatomy.wm >= params.centre_wm) & anatomy.parenchyma & (depth >= radius / 2)
    for coordinate, (low, high) in zip(
        (side * world[0], world[1], world[2]), (params.centre_x_mm, params.centre_y_mm, params.centre_z_mm)
    ):
        ok &= (coordinate >= low) & (coordinate <= high)
    candidates = np.flatnonzero(ok)
    index = candidates[rng.integers(len(candidates))]
    return world.reshape(3, -1)[:, index]


def _ellipsoid_distance(
    rng: np.random.Generator, world: np.ndarray, centre: np.ndarray, radius: float, elongation: float
) -> np.ndarray:
    """Distance to ``centre`` in units of the ellipsoid's axes: 1 on an ellipsoid as large as a ball of ``radius``."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    rotation = (q * np.sign(np.diag(r))).astype(np.float32)
    axes = rng.uniform(1 - elongation, 1 + elongation, 3)
    axes = (radius * axes / np.cbrt(np.prod(axes))).astype(np.float32)
    local = np.tensordot(rotation.T, world - centre[:, None, None, None], axes=1)
    return np.sqrt(np.sum((local / axes[:, None, None, None]) ** 2, axis=0))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float | np.ndarray) -> np.ndarray:
    """Gaussian-blurred white noise rescaled to unit variance: smooth, seeded irregularity."""
    noise = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return noise / noise.std()


def _lowest(score: np.ndarray, allowed: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` allowed voxels with the lowest score (all of them when fewer are allowed)."""
    index = np.flatnonzero(allowed)
    if count < len(index):
        index = index[np.argpartition(score.ravel()[index], count)[:count]]
    mask = np.zeros(score.shape, dtype=bool)
    mask.flat[index] = True
    return mask


def _largest_part(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component, so a compartment is one piece."""
    parts, found = ndi.label(mask)
    if found <= 1:
        return mask
    return parts == 1 + int(np.argmax(np.bincount(parts.ravel())[1:]))


def _part_containing(mask: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """The 6-connected component of ``mask`` that holds the connected, non-empty ``inside``."""
    parts, _ = ndi.label(mask)
    return parts == parts[inside][0]


# ---------------------------------------------------------------- contrasts


@dataclass(frozen=True)
class Contrast:
    """How tissue classes map to the four sequences; see the module docstring for the signal model."""

    intensity: dict[str, dict[str, float]]
    gamma: dict[str, float]
    heterogeneity: float = 0.08
    bias: float = 0.08
    noise: float = 8.0
    tumour_blur_vox: float = 0.4


BRATS_CONTRAST = Contrast(
    intensity={
        "t1": dict(zip(CLASSES, (200.0, 550.0, 800.0, 250.0, 480.0, 600.0))),
        "t1ce": dict(zip(CLASSES, (180.0, 500.0, 700.0, 220.0, 450.0, 1000.0))),
        "t2": dict(zip(CLASSES, (1000.0, 650.0, 450.0, 950.0, 850.0, 700.0))),
        "flair": dict(zip(CLASSES, (100.0, 600.0, 450.0, 650.0, 950.0, 800.0))),
    },
    gamma={"t1": 1.0, "t1ce": 1.0, "t2": -0.8, "flair": -0.5},
)


def synthesize_sequences(
    anatomy: Anatomy, labels: np.ndarray, rng: np.random.Generator, contrast: Contrast = BRATS_CONTRAST
) -> dict[str, np.ndarray]:
    """Float32 images keyed by ``macro.case.SEQUENCES`` (t1, t1ce, t2, flair) for one label map."""
    fractions = _class_fractions(anatomy, labels, contrast.tumour_blur_vox)
    tumour = fractions["ncr"] + fractions["ed"] + fractions["et"]
    tissue = fractions["gm"] + fractions["wm"]
    heterogeneity = 1 + contrast.heterogeneity * tumour * _smooth_noise(rng, anatomy.shape, 1.5)
    images = {}
    for seq in SEQUENCES:
        signal = sum(fractions[c] * np.float32(contrast.intensity[seq][c]) for c in CLASSES)
        signal = signal * anatomy.texture ** (np.float32(contrast.gamma[seq]) * tissue)
        signal = signal * heterogeneity * _bias_field(rng, anatomy, contrast.bias)
        images[seq] = _rician(rng, signal, contrast.noise)
    return images


def _class_fractions(anatomy: Anatomy, labels: np.ndarray, blur: float) -> dict[str, np.ndarray]:
    """Share of each class in every voxel; tumour classes displace healthy tissue and get soft edges."""
    tumour = {
        name.lower(): ndi.gaussian_filter((labels == value).astype(np.float32), blur) * anatomy.brain
        for value, name in LABELS.items()
    }
    healthy = 1 - (tumour["ncr"] + tumour["ed"] + tumour["et"])
    return {"csf": anatomy.csf * healthy, "gm": anatomy.gm * healthy, "wm": anatomy.wm * healthy, **tumour}


def _bias_field(rng: np.random.Generator, anatomy: Anatomy, strength: float) -> np.ndarray:
    """Smooth multiplicative coil inhomogeneity: exp of a random quadratic, at most ``strength`` in the brain."""
    u, v, w = (
        np.linspace(-1, 1, n, dtype=np.float32).reshape([-1 if i == axis else 1 for i in range(3)])
        for axis, n in enumerate(anatomy.shape)
    )
    terms = (u, v, w, u * u, v * v, w * w, u * v, u * w, v * w)
    coef = rng.standard_normal(len(terms)).astype(np.float32)
    poly = sum(c * t for c, t in zip(coef, terms))
    poly = poly / np.abs(poly[anatomy.brain]).max()
    return np.exp(np.float32(strength) * poly)


def _rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise, as a magnitude MR image has."""
    real = signal + np.float32(sigma) * rng.standard_normal(signal.shape, dtype=np.float32)
    imag = np.float32(sigma) * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag).astype(np.float32)


# ---------------------------------------------------------------- cases on disk


def case_files(folder: Path) -> list[Path]:
    """The five NIfTI files of a case folder in the BraTS 2023 layout (four sequences, then ``seg``)."""
    name = folder.name
    return [folder / f"{name}-{SEQUENCE_SUFFIXES[seq][0]}.nii.gz" for seq in SEQUENCES] + [
        folder / f"{name}-seg.nii.gz"
    ]


def write_case(
    folder: Path,
    images: dict[str, np.ndarray],
    labels: np.ndarray,
    anatomy: Anatomy,
    seed: int,
    dataset: str = DATASET,
    names: dict[int, str] = LABELS,
    regions: dict[str, tuple[int, ...]] = REGIONS,
    extra: dict | None = None,
) -> Path:
    """Write a BraTS-layout case and its ``truth.json``; volumes are measured on the uint8 map that is written.

    ``names`` and ``regions`` describe the label convention of ``labels``; ``extra`` adds keys to ``truth.json``.
    """
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    seg = labels.astype(np.uint8)
    arrays = [images[seq].astype(np.float32) for seq in SEQUENCES] + [seg]
    for path, arr in zip(case_files(folder), arrays):
        img = nib.Nifti1Image(arr, anatomy.affine)
        img.header.set_xyzt_units("mm")
        nib.save(img, path)
    truth = {
        "case": folder.name,
        "seed": seed,
        "dataset": dataset,
        "version": VERSION,
        **(extra or {}),
        "spacing_mm": list(anatomy.spacing),
        "shape": list(seg.shape),
        "labels": {str(k): v for k, v in names.items()},
        "volumes_ml": {
            region: int(np.isin(seg, values).sum()) * anatomy.voxel_ml for region, values in regions.items()
        },
    }
    (folder / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    return folder


def build_case(
    folder: Path,
    seed: int,
    tumour: TumourParams = TumourParams(),
    contrast: Contrast = BRATS_CONTRAST,
    dataset: str = DATASET,
) -> Path:
    """One case from one seed, written to ``folder``."""
    anatomy = load_anatomy()
    labels, images = simulate_case(seed, anatomy, tumour, contrast)
    return write_case(folder, images, labels, anatomy, seed, dataset)


def simulate_case(
    seed: int, anatomy: Anatomy, tumour: TumourParams = TumourParams(), contrast: Contrast = BRATS_CONTRAST
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Label map and images of one seed. Tumour and images draw from separate streams, so a new contrast keeps
    the tumour."""
    tumour_rng, image_rng = np.random.default_rng(seed).spawn(2)
    labels = make_tumour(tumour_rng, anatomy, tumour)
    return labels, synthesize_sequences(anatomy, labels, image_rng, contrast)


def case_is_complete(folder: Path, seed: int, dataset: str = DATASET) -> bool:
    """True when every file is there and ``truth.json`` says this generator version built it from ``seed``."""
    truth_path = folder / "truth.json"
    if not all(p.is_file() for p in case_files(folder)) or not truth_path.is_file():
        return False
    try:
        truth = json.loads(truth_path.read_text())
    except (OSError, ValueError):
        return False
    expected = {"case": folder.name, "seed": seed, "dataset": dataset, "version": VERSION}
    return isinstance(truth, dict) and all(truth.get(k) == v for k, v in expected.items())


@register(DATASET)
def make_brain_mri_demo(out: str | Path, n: int = 1, seed: int = 0) -> list[Path]:
    """``n`` cases ``demo-000``... under ``out``; case ``i`` uses seed ``seed + i``, as its truth.json records."""
    if n < 1:
        raise CaseError(None, f"brain-mri-demo needs n >= 1, got {n}")
    return [build_case(Path(out) / f"demo-{i:03d}", seed + i) for i in range(n)]
