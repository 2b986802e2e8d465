"""Continual anomaly-detection stream (``anomaly-stream``): six sequential tasks of normal images from real scans
that ship inside installed wheels, and test sets with synthetic anomalies and their pixel masks.

Why: CADIC (``shared/research/tool_methods.md`` §4) is evaluated on MVTec AD and VisA, which are neither shipped nor
downloadable here. This builder gives a stream in the MVTec AD folder layout (read by :mod:`macro.data.mvtec`, the
same reader as for real MVTec categories) from real anatomy, in seconds and byte-identical per seed.

Tasks, in stream order (source, modality, window; scikit-image, which holds the fundus and histology samples, is
not installed, so every task is radiology; pydicom's 693_J2KI.dcm head CT was left out: it is lossy JPEG 2000 with
block artefacts that no scanner produces)

    ==============  ====  ==================================================================  =================
    task            mod.  source (all offline)                                                field of view
    ==============  ====  ==================================================================  =================
    brain-axial     mr    MNI152 2009a T1, 1 mm (nilearn), axial slices z = 45..135 voxels     0.95 x 233 mm
    brain-coronal   mr    same template, coronal slices y = 100..180                           0.95 x 197 mm
    brain-sagittal  mr    same template, sagittal slices x = 45..152                           0.95 x 233 mm
    ct-head         ct    pydicom J2K_pixelrep_mismatch.dcm (skull base), brain window 40/100  0.80 x 512 px
    mr-abdomen      mr    pydicom examples_overlay.dcm (T1 abdomen), 0.5-99.5 % window         0.75 x 484 px
    ct-thorax       ct    pydicom CT_small.dcm, soft-tissue window 40 / 400 HU                 0.95 x 128 px
    ==============  ====  ==================================================================  =================

One image (224 x 224, greyscale, everything drawn from ``numpy.random.default_rng([seed, task, split, index])``)
    1. anatomy: a source slice picked uniformly (MNI tasks: any level of the range; DICOM tasks: the one slice, so
       their variety comes from steps 2, 3 and 5 alone).
    2. geometry: field of view x U(0.95, 1.05), rotation U(-6, 6) deg, centre shift U(-0.04, 0.04) of the field,
       an elastic warp (smooth displacement, amplitude U(0, 2) px), bilinear resampling, air outside.
    3. contrast: gamma U(0.85, 1.15) and gain U(0.92, 1.08) (scanner and window differences).
    4. anomaly (test split, anomalous half only; one kind per image, kinds in turn), placed in the anatomy
       (distance to the body outline at least its radius), kept only if it changes the masked pixels by at least
       0.03 on average (else redrawn, up to 20 times):
       - ``lesion``: an irregular blob (radius U(9, 20) px, 3 random harmonics up to 0.25, soft edge 1.5 px) at the
         local tissue mean (Gaussian sigma 10 px) -/+ U(0.12, 0.25), with smooth internal texture of 0.03 and, with
         chance 0.3, a brighter rim; values stay inside the image's own 2-98 % range, so it is no brighter or darker
         than normal tissue elsewhere.
       - ``inhomogeneity``: a local multiplicative field 1 + s g (g a Gaussian bump, sigma U(16, 30) px,
         s = -/+ U(0.3, 0.5)): signal drop-out or a coil hot spot. Mask: |s g| >= 0.1 inside the body.
       - ``cutpaste``: an elliptic patch (semi-axes U(14, 28) px, random angle) cut from another task's image and
         matched to the mean and standard deviation of the tissue it covers, soft edge 1.5 px: wrong anatomy with
         the right intensity.
       - ``missing``: an elliptic region (semi-axes U(12, 24) px) at the most structured of 20 candidate places,
         filled from its surroundings by normalised Gaussian convolution (sigma = the larger semi-axis): a structure
         that is absent.
       Mask = blend weight >= 0.5 (inside the body for ``inhomogeneity``).
    5. acquisition: a smooth multiplicative bias (at most about 5 %), Rician noise sigma U(0.008, 0.015), blur sigma
       U(0, 0.7) px; 8-bit.

Layout (MVTec AD): ``<task>/train/good/NNNNN.png``, ``<task>/test/good/NNNNN.png``, ``<task>/test/<kind>/NNNNN.png``
and ``<task>/ground_truth/<kind>/NNNNN_mask.png`` (255 = anomalous), each image with a sidecar ``NNNNN.json``
(``modality``, task, split, kind, seed) so the agent's case loader sets the modality. ``stream.json`` at the top,
written last, lists the tasks in order and the options; a folder without it was never finished.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from macro.data import register
from macro.data.labelled import smooth_field
from macro.errors import CaseError

DATASET = "anomaly-stream"
SIZE = 224
KINDS = ("lesion", "inhomogeneity", "cutpaste", "missing")
SPLITS = {"train": 0, "test-good": 1, "test-anomaly": 2, "donor": 3}
MIN_CHANGE = 0.03
TRIES = 20
STREAM_JSON = "stream.json"


@dataclass(frozen=True)
class TaskSource:
    """One task of the stream: its name, modality, field of view as a fraction of the source's larger side, and the
    window that maps its raw intensities to [0, 1] (see :func:`apply_window`)."""

    name: str
    modality: str
    field: float
    window: tuple = ("max",)

    @property
    def preprocessing(self) -> dict:
        """How a raw scan becomes one of this task's images; recorded in every sidecar and in the bank."""
        return {"window": list(self.window), "field": self.field}


TASKS = (
    TaskSource("brain-axial", "mr", 0.95),
    TaskSource("brain-coronal", "mr", 0.95),
    TaskSource("brain-sagittal", "mr", 0.95),
    TaskSource("ct-head", "ct", 0.80, ("hu", 40, 100)),
    TaskSource("mr-abdomen", "mr", 0.75, ("percentile", 0.5, 99.5)),
    TaskSource("ct-thorax", "ct", 0.95, ("hu", 40, 400)),
)
PICTURE = {"window": ["picture"], "field": 1.0}  # 8-bit pictures: used as they are
SOURCE_FILES = {
    "ct-head": "J2K_pixelrep_mismatch.dcm",
    "mr-abdomen": "examples_overlay.dcm",
    "ct-thorax": "CT_small.dcm",
}


@functools.cache
def source_slices(name: str) -> tuple[np.ndarray, ...]:
    """The real 2D slices of a task, windowed to [0, 1], anatomy up (read once per process, read-only)."""
    if name.startswith("brain-"):
        from nilearn import datasets

        volume = datasets.load_mni152_template(resolution=1).get_fdata(dtype=np.float32)
        volume = volume / volume.max()
        if name == "brain-axial":
            slices = [volume[:, :, z].T[::-1] for z in range(45, 136)]
        elif name == "brain-coronal":
            slices = [volume[:, y, :].T[::-1] for y in range(100, 181)]
        else:
            slices = [volume[x, :, :].T[::-1] for x in range(45, 153)]
    elif name in SOURCE_FILES:
        task = next(t for t in TASKS if t.name == name)
        slices = [apply_window(_dicom_hu(SOURCE_FILES[name]), task.window)]
    else:
        raise CaseError(None, f"unknown anomaly-stream task {name!r}", accepted=", ".join(t.name for t in TASKS))
    out = tuple(np.ascontiguousarray(s, dtype=np.float32) for s in slices)
    for s in out:
        s.flags.writeable = False
    return out


def _dicom_hu(name: str) -> np.ndarray:
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file(name))
    return ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1)) + float(
        getattr(ds, "RescaleIntercept", 0)
    )


def apply_window(raw: np.ndarray, window) -> np.ndarray:
    """Raw intensities -> [0, 1]: ``("hu", level, width)`` a CT window, ``("percentile", lo, hi)`` the image's own
    percentile range, ``("max",)`` divided by the maximum. The one mapping bank building and tool-time scoring share."""
    kind, *args = window
    if kind == "hu":
        level, width = args
        return np.clip((raw - (level - width / 2)) / width, 0, 1)
    if kind == "percentile":
        lo, hi = np.percentile(raw, args)
        return np.clip((raw - lo) / max(hi - lo, 1e-6), 0, 1)
    if kind == "max":
        return raw / max(float(raw.max()), 1e-6)
    raise ValueError(f"unknown window {window!r}")


def canvas(src: np.ndarray, side: float, centre, angle: float = 0.0, dy=0.0, dx=0.0) -> np.ndarray:
    """A SIZE x SIZE view of ``src``: a square field of ``side`` source pixels around ``centre``, rotated by
    ``angle`` and displaced by (dy, dx), bilinear, air (0) outside the source."""
    grid = (np.arange(SIZE, dtype=np.float32) + 0.5) / SIZE - 0.5
    gy, gx = grid[:, None] * side, grid[None, :] * side
    c, s = np.cos(angle), np.sin(angle)
    rows = centre[0] + c * gy - s * gx + dy
    cols = centre[1] + s * gy + c * gx + dx
    return ndi.map_coordinates(src, [rows, cols], order=1, mode="constant", cval=0.0)


def square_view(src: np.ndarray, field: float) -> np.ndarray:
    """The task's view of a 2D source in its canonical pose: centred, unrotated, ``field`` of the larger side."""
    h, w = src.shape
    return canvas(src, max(h, w) * field, np.array([h / 2, w / 2]))


# ---------------------------------------------------------------- one normal image


def anatomy(rng: np.random.Generator, task: TaskSource) -> np.ndarray:
    """Steps 1-3: a real slice, resampled under a random pose and elastic warp, with a scanner contrast change."""
    slices = source_slices(task.name)
    src = slices[int(rng.integers(len(slices)))]
    h, w = src.shape
    side = max(h, w) * task.field * rng.uniform(0.95, 1.05)
    angle = np.deg2rad(rng.uniform(-6, 6))
    centre = np.array([h / 2, w / 2]) + rng.uniform(-0.04, 0.04, 2) * side
    u = np.linspace(-1, 1, SIZE, dtype=np.float32)
    amplitude = rng.uniform(0, 2.0) * side / SIZE
    dy, dx = (amplitude * smooth_field(rng, u, u, 1.0) for _ in range(2))
    image = canvas(src, side, centre, angle, dy, dx)
    return np.clip(rng.uniform(0.92, 1.08) * image ** rng.uniform(0.85, 1.15), 0, 1).astype(np.float32)


def acquire(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Step 5: bias field, Rician noise and blur; returns 8-bit pixels."""
    u = np.linspace(-1, 1, SIZE, dtype=np.float32)
    bias = np.exp(0.025 * smooth_field(rng, u, u, 0.4))
    sigma = rng.uniform(0.008, 0.015)
    noisy = np.hypot(image * bias + sigma * rng.standard_normal(image.shape), sigma * rng.standard_normal(image.shape))
    blurred = ndi.gaussian_filter(noisy, rng.uniform(0, 0.7))
    return np.clip(np.rint(blurred * 255), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- anomalies (step 4)


def body_mask(image: np.ndarray) -> np.ndarray:
    """The anatomy: smoothed signal above 0.08, holes filled, largest connected part."""
    mask = ndi.binary_fill_holes(ndi.gaussian_filter(image, 2) > 0.08)
    labels, count = ndi.label(mask)
    if count > 1:
        mask = labels == 1 + int(np.argmax(ndi.sum(mask, labels, range(1, count + 1))))
    return mask


def _centre(
    rng: np.random.Generator, inside: np.ndarray, radius: float, weight: np.ndarray | None = None, candidates: int = 1
) -> tuple[int, int] | None:
    """A point at least ``radius`` px inside the body; of ``candidates`` draws the one with the largest weight."""
    rows, cols = np.nonzero(ndi.distance_transform_edt(inside) >= radius + 2)
    if len(rows) == 0:
        return None
    picks = rng.integers(len(rows), size=candidates)
    best = picks[int(np.argmax(weight[rows[picks], cols[picks]]))] if weight is not None else picks[0]
    return int(rows[best]), int(cols[best])


def _ellipse(
    rng: np.random.Generator,
    centre: tuple[int, int],
    axes: tuple[float, float],
    edge: float = 1.5,
    harmonics: float = 0.0,
) -> np.ndarray:
    """Soft elliptic (optionally irregular) blend weight in [0, 1] around ``centre``."""
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    y, x = yy - centre[0], xx - centre[1]
    a = (np.cos(angle) * x + np.sin(angle) * y) / axes[0]
    b = (-np.sin(angle) * x + np.cos(angle) * y) / axes[1]
    radius = np.hypot(a, b)
    border = np.ones_like(radius)
    if harmonics:
        theta = np.arctan2(b, a)
        amps = rng.uniform(0, 1, 3)
        amps *= harmonics / max(amps.sum(), 1e-6)
        for k, amp in zip((2, 3, 5), amps):
            border += amp * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return (0.5 + 0.5 * np.tanh((border - radius) * min(axes) / edge)).astype(np.float32)


def _lesion(rng, image, body, donor):
    radius = rng.uniform(9, 20)
    centre = _centre(rng, body, radius)
    if centre is None:
        return None
    alpha = _ellipse(rng, centre, (radius, radius * rng.uniform(0.7, 1.0)), harmonics=0.25)
    lo, hi = np.percentile(image[body], [2, 98])
    local = ndi.gaussian_filter(image, 10)[centre]
    value = np.clip(local + rng.choice([-1, 1]) * rng.uniform(0.12, 0.25), lo, hi)
    u = np.linspace(-1, 1, SIZE, dtype=np.float32)
    texture = value + 0.03 * smooth_field(rng, u, u, 6.0)
    if rng.random() < 0.3:
        rim = np.clip(alpha * (1 - alpha) * 4, 0, 1)
        texture = texture + rim * rng.uniform(0.08, 0.15)
    lesion = image + alpha * (np.clip(texture, lo, hi) - image)
    return lesion, alpha >= 0.5


def _inhomogeneity(rng, image, body, donor):
    sigma = rng.uniform(16, 30)
    centre = _centre(rng, body, sigma * 0.5)
    if centre is None:
        return None
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    bump = np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * sigma**2))
    strength = rng.choice([-1, 1]) * rng.uniform(0.3, 0.5)
    return np.clip(image * (1 + strength * bump), 0, 1), (np.abs(strength * bump) >= 0.1) & body


def _cutpaste(rng, image, body, donor):
    axes = (rng.uniform(14, 28), rng.uniform(14, 28))
    target = _centre(rng, body, max(axes))
    source = _centre(rng, body_mask(donor), max(axes))
    if target is None or source is None:
        return None
    shifted = ndi.shift(donor, (target[0] - source[0], target[1] - source[1]), order=0, mode="constant")
    alpha = _ellipse(rng, target, axes)
    region = alpha >= 0.5
    patch = (shifted - shifted[region].mean()) / (shifted[region].std() + 1e-3) * image[region].std() + image[
        region
    ].mean()
    return np.clip(image + alpha * (patch - image), 0, 1), region


def _missing(rng, image, body, donor):
    axes = (rng.uniform(12, 24), rng.uniform(12, 24))
    structure = ndi.gaussian_filter(ndi.gaussian_gradient_magnitude(image, 1.5), max(axes) / 2)
    centre = _centre(rng, body, max(axes), weight=structure, candidates=20)
    if centre is None:
        return None
    alpha = _ellipse(rng, centre, axes)
    keep = 1.0 - alpha
    sigma = max(axes)
    fill = ndi.gaussian_filter(image * keep, sigma) / np.maximum(ndi.gaussian_filter(keep, sigma), 1e-3)
    return image + alpha * (fill - image), alpha >= 0.5


ANOMALIES = {"lesion": _lesion, "inhomogeneity": _inhomogeneity, "cutpaste": _cutpaste, "missing": _missing}


def add_anomaly(
    rng: np.random.Generator, image: np.ndarray, kind: str, donor: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Step 4: the image with one anomaly of ``kind`` and its boolean mask; redrawn until it changes the image."""
    body = body_mask(image)
    for _ in range(TRIES):
        made = ANOMALIES[kind](rng, image, body, donor)
        if made is not None and made[1].any() and np.abs(made[0] - image)[made[1]].mean() >= MIN_CHANGE:
            return made[0].astype(np.float32), made[1]
    raise CaseError(None, f"could not place a visible {kind} anomaly in {TRIES} tries (body area {int(body.sum())} px)")


def normal_image(seed: int, task_index: int, split: str, index: int) -> np.ndarray:
    """A normal 8-bit image of task ``task_index``; the same arguments give the same pixels."""
    rng = np.random.default_rng([seed, task_index, SPLITS[split], index])
    return acquire(rng, anatomy(rng, TASKS[task_index]))


def anomalous_image(seed: int, task_index: int, index: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(8-bit image, boolean mask, kind) of anomalous test image ``index``; kinds cycle through ``KINDS``."""
    rng = np.random.default_rng([seed, task_index, SPLITS["test-anomaly"], index])
    kind = KINDS[index % len(KINDS)]
    clean = anatomy(rng, TASKS[task_index])
    others = [i for i in range(len(TASKS)) if i != task_index]
    donor = anatomy(rng, TASKS[others[int(rng.integers(len(others)))]])
    image, mask = add_anomaly(rng, clean, kind, donor)
    return acquire(rng, image), mask, kind


# ---------------------------------------------------------------- writer


def _save(path: Path, pixels: np.ndarray, sidecar: dict | None) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG", compress_level=1)
    if sidecar is not None:
        path.with_suffix(".json").write_text(json.dumps(sidecar) + "\n")


@register(DATASET)
def make_anomaly_stream(
    out: str | Path,
    n: int = 60,
    seed: int = 0,
    n_test: int = 40,
    tasks: int = len(TASKS),
    only: tuple[str, ...] | None = None,
    progress=None,
) -> list[Path]:
    """Write the stream into ``out``: per task ``n`` training normals, ``n_test`` normal and ``n_test`` anomalous
    test images with masks; return the task folders in stream order. The stream is the first ``tasks`` tasks, or
    the tasks named in ``only`` (kept in stream order). ``progress(k)`` after each task."""
    for name, value, low in (("n", n, 2), ("n_test", n_test, 1), ("tasks", tasks, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= 10_000:
            raise CaseError(None, f"{DATASET} {name} must be an integer >= {low}, got {value!r}")
    if tasks > len(TASKS):
        raise CaseError(None, f"{DATASET} has {len(TASKS)} tasks, {tasks} asked")
    unknown = sorted(set(only or ()) - {t.name for t in TASKS})
    if unknown:
        raise CaseError(
            None, f"{DATASET} has no task(s) {', '.join(unknown)}", accepted=", ".join(t.name for t in TASKS)
        )
    chosen = [t for t, task in enumerate(TASKS) if (task.name in only if only else t < tasks)]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CaseError(out, "output path exists and is not a folder")
    folders = []
    for t in chosen:
        task = TASKS[t]
        folder = out / task.name
        base = {
            "modality": task.modality,
            "dataset": DATASET,
            "task": task.name,
            "seed": seed,
            "preprocessing": task.preprocessing,
        }
        for i in range(n):
            _save(
                folder / "train" / "good" / f"{i:05d}.png",
                normal_image(seed, t, "train", i),
                {**base, "split": "train"},
            )
        for i in range(n_test):
            _save(
                folder / "test" / "good" / f"{i:05d}.png",
                normal_image(seed, t, "test-good", i),
                {**base, "split": "test"},
            )
            image, mask, kind = anomalous_image(seed, t, i)
            _save(folder / "test" / kind / f"{i:05d}.png", image, {**base, "split": "test", "anomaly": kind})
            _save(folder / "ground_truth" / kind / f"{i:05d}_mask.png", mask.astype(np.uint8) * 255, None)
        folders.append(folder)
        if progress:
            progress(1)
    manifest = {
        "dataset": DATASET,
        "seed": seed,
        "n": n,
        "n_test": n_test,
        "size": SIZE,
        "kinds": list(KINDS),
        "tasks": [
            {"name": TASKS[t].name, "modality": TASKS[t].modality, "preprocessing": TASKS[t].preprocessing}
            for t in chosen
        ],
    }
    staging = out / f".{STREAM_JSON}.partial"
    staging.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(staging, out / STREAM_JSON)
    return folders


def stream_tasks(root: Path) -> list[Path]:
    """The task folders of a finished stream, in order; a ``CaseError`` when ``root`` holds none."""
    manifest = Path(root) / STREAM_JSON
    if not manifest.is_file():
        raise CaseError(
            root,
            f"no {STREAM_JSON}: not a finished anomaly stream",
            accepted=f"a folder made by: macro data make {DATASET}",
        )
    try:
        names = [task["name"] for task in json.loads(manifest.read_text())["tasks"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise CaseError(manifest, f"unreadable stream manifest ({type(exc).__name__}: {exc})") from None
    return [Path(root) / name for name in names]
