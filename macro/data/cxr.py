"""Chest X-ray phantom (``cxr-phantom``): seeded greyscale PA radiographs with eight ChestX-ray14 findings.

Why: FedLSM's multi-label benchmark is NIH ChestX-ray14 (``shared/research/tool_methods.md`` section 2), which is
neither shipped nor downloadable here. This generator gives a labelled folder of any size in seconds with eight of
its findings, co-occurring at plausible rates, each drawn with the radiological sign a reader looks for, in the
place it belongs. Patient size, inspiration, position, exposure and noise vary, so no single pixel gives a label
away.

Frame and anatomy (lengths in half field widths, x to the image right = the patient's left, y downward)
    - patient: thorax scale s = U(0.86, 1.04) about an offset of U(-0.04, 0.04) in x and U(-0.03, 0.05) in y; the
      anatomy below is in the thorax frame ((x - x0) / s, (y - y0) / s). Subcutaneous fat f = U(0, 1): body
      half-width 0.82 + 0.17 f; a larger patient attenuates more, so soft tissue is brighter and lungs less dark.
    - lungs: x = +/-0.40 centres, half-widths 0.33 (right, image left) and 0.31 (left), apex at y = -0.80; the
      outline is ((x - cx) / a)^2 + g(v) < 1 with v the height in lung half-heights, g = v^2 above the middle (a
      round apex) and v^4 below it (a straight lateral wall, so the costophrenic angle is sharp); medially cut at
      |x| = 0.11 (plus the aortic knob on the left at y = -0.35).
    - diaphragm: each dome y = d + h ((x - cx) / 0.34)^2, right dome d = U(0.42, 0.58), left d + U(0.02, 0.08),
      h = U(0.10, 0.18); below it the abdomen (soft tissue), with a gastric bubble under the left dome (chance 0.6).
    - heart: an ellipse sitting on the left dome, right border at x = -0.13 - 0.25 (CTR - 0.45), width = CTR x the
      thoracic width (1.48); normal cardiothoracic ratio CTR ~ N(0.45, 0.03) clipped to [0.38, 0.50].
    - hila (dense blobs at x = +/-0.20, y = -0.05); vessel markings radiating from them, fading to the periphery;
      trachea (air column down to the carina at y = -0.30); spine with vertebral end plates; posterior ribs (bands
      every U(0.15, 0.18), curving down laterally), fainter anterior ribs, clavicles.

Image: intensity = bright for dense. Air outside the body U(0, 0.05); soft tissue U(0.50, 0.62) + 0.10 f; aerated
lung U(0.10, 0.20) + 0.08 f, with an opacity map o in [0, 1] (findings, vessels) filling air with soft tissue:
lung pixel = soft - (1 - o) (soft - air); bones added on top (ribs U(0.06, 0.10), spine 0.10, clavicles 0.10).
Then exposure: gamma U(0.8, 1.25), contrast U(0.85, 1.1), offset U(-0.03, 0.05); Gaussian blur 0.5 px; noise
sigma U(0.01, 0.03); 8-bit.

Streams: an image's generator is split into a patient stream (anatomy, exposure, noise) and a findings stream, so
one seed rendered with and without a finding shows the same patient, and the difference is the finding alone.

Findings (``FINDINGS``: chance given the earlier finding named, else the base chance; marginal prevalence)

    =============  ====================  ==========  =========================================================
    finding        chance                prevalence  appearance
    =============  ====================  ==========  =========================================================
    Cardiomegaly   0.05                  5.0 %       enlarged heart shadow: CTR U(0.51, 0.66), grows leftward and
                                                     taller
    Effusion       0.40 with Cardiomeg.  12.5 %      fluid in the costophrenic recess: opacity U(0.8, 1.0) below
                   else 0.11                         a meniscus rising to the lateral wall, height U(0.05, 0.35)
                                                     above the angle; blunts the angle, hides the dome; right
                                                     0.45, left 0.35, both 0.2
    Infiltration   0.18                  18.0 %      ill-defined hazy patches (opacity U(0.25, 0.5), reticular),
                                                     coverage U(0.15, 0.35) of mid/lower zones, one lung or both
                                                     (0.4)
    Consolidation  0.16 with Infiltr.    5.3 %       dense homogeneous lobar opacity U(0.6, 0.9) bounded by a
                   else 0.03                         sharp fissure (lower lobe 0.6, upper 0.4), air bronchograms
    Atelectasis    0.25 with Effusion    10.1 %      volume loss: plate-like band (U(0.15, 0.35) long,
                   else 0.08                         U(0.015, 0.035) thick) above the dome, that dome raised
                                                     U(0.04, 0.10), mediastinum pulled toward it (chance 0.4)
    Mass           0.05                  5.0 %       one lobulated round opacity, radius U(0.09, 0.17), in a lung
    Nodule         0.15 with Mass        5.5 %       1 (0.75), 2 (0.17) or 3 small round opacities, radius
                   else 0.05                         U(0.03, 0.06), sharp edge
    Pneumothorax   0.04                  4.0 %       lung collapsed toward the hilum by U(0.10, 0.35): a lucent
                                                     apical/lateral rim without vessel markings, a thin visceral
                                                     pleural line at the lung edge
    =============  ====================  ==========  =========================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from scipy import ndimage as ndi
from scipy.special import ndtri

from macro.data import register
from macro.data.labelled import PhantomSpec, image_size, smooth_field, write_phantom

DATASET = "cxr-phantom"
CLASSES = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumothorax", "Consolidation")
SPEC = PhantomSpec(DATASET, "xray", "cxr", CLASSES, multi_label=True)
SIZE = 96
# drawn in this order: finding -> (finding it depends on, chance with it, chance without it)
FINDINGS = {
    "Cardiomegaly": (None, 0.05, 0.05),
    "Effusion": ("Cardiomegaly", 0.40, 0.11),
    "Infiltration": (None, 0.18, 0.18),
    "Consolidation": ("Infiltration", 0.16, 0.03),
    "Atelectasis": ("Effusion", 0.25, 0.08),
    "Mass": (None, 0.05, 0.05),
    "Nodule": ("Mass", 0.15, 0.05),
    "Pneumothorax": (None, 0.04, 0.04),
}
LUNG_CENTRE = {-1: -0.40, 1: 0.40}
LUNG_HALF_WIDTH = {-1: 0.33, 1: 0.31}
APEX, LUNG_HALF_HEIGHT, MEDIAL = -0.80, 0.90, 0.11
THORAX_HALF_WIDTH = 0.74
DOME_WIDTH = 0.34


def _sigmoid(x) -> np.ndarray:
    return (0.5 + 0.5 * np.tanh(0.5 * np.asarray(x, dtype=np.float32))).astype(np.float32)


@dataclass
class _Chest:
    """One patient: the thorax-frame grid, the anatomy's numbers and the maps findings edit."""

    rng: np.random.Generator  # the patient's stream: anatomy, exposure, noise
    lesion_rng: np.random.Generator  # the findings' stream, so a finding never changes the patient around it
    x: np.ndarray  # (1, W) thorax-frame x
    y: np.ndarray  # (H, 1) thorax-frame y
    dome_level: dict[int, float]
    dome_height: float
    ctr: float
    shift: float = 0.0
    atelectasis_side: int = 0
    opacity: np.ndarray | None = None  # (H, W) findings' opacity in the lungs
    lucent: np.ndarray | None = None  # (H, W) extra air (pneumothorax rim)
    aerated: dict[int, np.ndarray] | None = None  # per side: where vessel markings exist

    def dome(self, side: int, x) -> np.ndarray:
        return self.dome_level[side] + self.dome_height * ((x - LUNG_CENTRE[side]) / DOME_WIDTH) ** 2

    def outline(self, side: int, x, y) -> np.ndarray:
        """Lung outline function: below 1 inside the lung's superellipse (the dome cuts it separately)."""
        u = (x - LUNG_CENTRE[side]) / LUNG_HALF_WIDTH[side]
        v = (y - (APEX + LUNG_HALF_HEIGHT)) / LUNG_HALF_HEIGHT
        return u * u + np.where(v < 0, v * v, v**4)

    def lung(self, side: int, x=None, y=None, edge: float = 0.04) -> np.ndarray:
        x = self.x if x is None else x
        y = self.y if y is None else y
        medial = MEDIAL + (0.06 * np.exp(-(((y + 0.35) / 0.08) ** 2)) if side == 1 else 0.0)
        return (
            _sigmoid((1 - self.outline(side, x, y)) / edge)
            * _sigmoid((self.dome(side, x) - y) / 0.012)
            * _sigmoid((side * x - medial) / 0.012)
        )

    def heart(self, x=None, y=None) -> np.ndarray:
        x = self.x if x is None else x
        y = self.y if y is None else y
        width = self.ctr * 2 * THORAX_HALF_WIDTH
        right = -0.13 - 0.25 * (self.ctr - 0.45) + self.shift
        half_height = 0.30 + 0.35 * (width / 2 - 0.33)
        centre_y = self.dome_level[1] - 0.45 * half_height
        ellipse = ((x - right - width / 2) / (width / 2)) ** 2 + ((y - centre_y) / half_height) ** 2
        return _sigmoid((1 - ellipse) / 0.06)

    def inside_lung(self, side: int, count: int, margin: float = 0.0) -> np.ndarray:
        """``count`` random points (complex x + iy) well inside one lung and clear of the heart, by rejection."""
        found: list[complex] = []
        while len(found) < count:
            px = LUNG_CENTRE[side] + LUNG_HALF_WIDTH[side] * self.lesion_rng.uniform(-1, 1, 64)
            py = self.lesion_rng.uniform(APEX, self.dome_level[side] + self.dome_height, 64)
            ok = (self.lung(side, px, py) * (1 - self.heart(px, py)) > 0.9) & (
                self.outline(side, px, py) < (1 - margin) ** 2
            )
            found.extend((px + 1j * py)[ok][: count - len(found)].tolist())
        return np.asarray(found)


def draw_findings(rng: np.random.Generator) -> dict[str, bool]:
    """The findings of one image, drawn in ``FINDINGS`` order so the correlations hold."""
    found: dict[str, bool] = {}
    for name, (given, with_it, without_it) in FINDINGS.items():
        found[name] = bool(rng.random() < (with_it if given and found[given] else without_it))
    return found


# ---------------------------------------------------------------- findings (each edits the opacity maps)


def _effusion(chest: _Chest, lungs: dict[int, np.ndarray], sides: tuple[int, ...] | None = None) -> None:
    """Pleural fluid with a meniscus on ``sides`` (drawn when None: right, left or both)."""
    rng = chest.lesion_rng
    if sides is None:
        pick = rng.random()
        sides = (-1,) if pick < 0.45 else (1,) if pick < 0.8 else (-1, 1)
    for side in sides:
        angle_y = chest.dome(side, LUNG_CENTRE[side] + side * LUNG_HALF_WIDTH[side])
        lateral = np.clip(side * (chest.x - LUNG_CENTRE[side]) / LUNG_HALF_WIDTH[side], -1, 1) * 0.5 + 0.5
        surface = angle_y - rng.uniform(0.05, 0.35) * (0.55 + 0.6 * lateral**2)
        fluid = rng.uniform(0.8, 1.0) * _sigmoid((chest.y - surface) / 0.03) * lungs[side]
        np.maximum(chest.opacity, fluid, out=chest.opacity)


def _infiltration(chest: _Chest, lungs: dict[int, np.ndarray]) -> None:
    rng = chest.lesion_rng
    x, y = chest.x[0], chest.y[:, 0]
    sides = (-1, 1) if rng.random() < 0.4 else (int(rng.choice((-1, 1))),)
    for side in sides:
        patches = _sigmoid(
            (smooth_field(rng, x, y, 2.0) + 0.8 * (y[:, None] + 0.1) - ndtri(1 - rng.uniform(0.15, 0.35))) / 0.5
        )
        reticular = 0.6 + 0.4 * np.clip(0.5 + 0.35 * smooth_field(rng, x, y, 9.0), 0, 1)
        haze = rng.uniform(0.25, 0.5) * patches * reticular * lungs[side]
        np.maximum(chest.opacity, haze, out=chest.opacity)


def _consolidation(chest: _Chest, lungs: dict[int, np.ndarray]) -> None:
    rng = chest.lesion_rng
    side = int(rng.choice((-1, 1)))
    tilt = rng.uniform(-0.3, 0.3)
    if rng.random() < 0.6:
        fissure = chest.dome_level[side] - rng.uniform(0.3, 0.45) + tilt * (chest.x - LUNG_CENTRE[side])
        lobe = _sigmoid((chest.y - fissure) / 0.02)
    else:
        fissure = rng.uniform(-0.3, -0.1) + tilt * (chest.x - LUNG_CENTRE[side])
        lobe = _sigmoid((fissure - chest.y) / 0.02)
    x, y = chest.x[0], chest.y[:, 0]
    filled = _sigmoid((smooth_field(rng, x, y, 1.5) - ndtri(1 - rng.uniform(0.6, 0.95))) / 0.3)
    hx, hy = side * 0.20, -0.05
    theta = np.arctan2(chest.y - hy, chest.x - hx)
    bronchi = ((1 + np.cos(rng.uniform(10, 16) * theta + 1.5 * smooth_field(rng, x, y, 1.0))) / 2) ** 12
    dense = rng.uniform(0.6, 0.9) * lobe * filled * (1 - 0.5 * bronchi) * lungs[side]
    np.maximum(chest.opacity, dense, out=chest.opacity)


def _atelectasis_band(chest: _Chest, side: int, lungs: dict[int, np.ndarray]) -> None:
    rng = chest.lesion_rng
    cx = LUNG_CENTRE[side] + rng.uniform(-0.5, 0.5) * LUNG_HALF_WIDTH[side]
    cy = chest.dome(side, cx) - rng.uniform(0.1, 0.3)
    angle = rng.uniform(-0.25, 0.25)
    along = (chest.x - cx) * np.cos(angle) + (chest.y - cy) * np.sin(angle)
    across = (chest.y - cy) * np.cos(angle) - (chest.x - cx) * np.sin(angle)
    band = np.exp(-((across / rng.uniform(0.015, 0.035)) ** 2)) * _sigmoid(
        (rng.uniform(0.15, 0.35) / 2 - np.abs(along)) / 0.02
    )
    np.maximum(chest.opacity, rng.uniform(0.6, 0.9) * band * lungs[side], out=chest.opacity)


def _round_opacity(
    chest: _Chest, centre: complex, radius: float, strength: float, edge: float, lobulation: float
) -> None:
    rng = chest.lesion_rng
    dz = (chest.x - centre.real) + 1j * (chest.y - centre.imag)
    theta = np.angle(dz)
    border = radius * (
        1 + lobulation * sum(rng.uniform(0, 1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (3, 4, 5)) / 1.5
    )
    np.maximum(chest.opacity, strength * _sigmoid((border - np.abs(dz)) / edge), out=chest.opacity)


def _mass(chest: _Chest, lungs: dict[int, np.ndarray]) -> None:
    rng = chest.lesion_rng
    radius = rng.uniform(0.09, 0.17)
    centre = chest.inside_lung(int(rng.choice((-1, 1))), 1, margin=0.25)[0]
    _round_opacity(chest, centre, radius, rng.uniform(0.7, 0.95), 0.012, 0.12)


def _nodule(chest: _Chest, lungs: dict[int, np.ndarray]) -> None:
    rng = chest.lesion_rng
    count = int(rng.choice((1, 2, 3), p=(0.75, 0.17, 0.08)))
    for _ in range(count):
        centre = chest.inside_lung(int(rng.choice((-1, 1))), 1, margin=0.15)[0]
        _round_opacity(chest, centre, rng.uniform(0.03, 0.06), rng.uniform(0.55, 0.9), 0.008, 0.0)


def _pneumothorax(chest: _Chest, lungs: dict[int, np.ndarray], side: int | None = None) -> None:
    """A collapsed lung inside a lucent rim on ``side`` (drawn when None)."""
    rng = chest.lesion_rng
    side = int(rng.choice((-1, 1))) if side is None else side
    keep = 1 - rng.uniform(0.10, 0.35)
    ax, ay = side * 0.22, 0.05
    cx, cy = ax + (chest.x - ax) / keep, ay + (chest.y - ay) / keep
    outline = chest.outline(side, cx, cy)
    collapsed = chest.lung(side, cx, cy) * lungs[side]
    rim = lungs[side] * (1 - collapsed)
    pleura = np.exp(-(((outline - 1) / 0.12) ** 2)) * lungs[side] * (outline < 1.6)
    np.maximum(chest.opacity, 0.35 * pleura + 0.15 * (1 - keep) * collapsed, out=chest.opacity)
    chest.lucent = 0.05 * rim
    chest.aerated[side] = collapsed


# ---------------------------------------------------------------- one image


def _patient(rng: np.random.Generator, lesion_rng: np.random.Generator, size: int, findings: dict[str, bool]) -> _Chest:
    scale = rng.uniform(0.86, 1.04)
    x0, y0 = rng.uniform(-0.04, 0.04), rng.uniform(-0.03, 0.05)
    axis = (np.arange(size, dtype=np.float64) + 0.5) * (2.0 / size) - 1.0
    right = rng.uniform(0.42, 0.58)
    domes = {-1: right, 1: right + rng.uniform(0.02, 0.08)}
    ctr = float(np.clip(rng.normal(0.45, 0.03), 0.38, 0.50))
    chest = _Chest(
        rng,
        lesion_rng,
        ((axis - x0) / scale).astype(np.float32)[None, :],
        ((axis - y0) / scale).astype(np.float32)[:, None],
        domes,
        rng.uniform(0.10, 0.18),
        ctr,
    )
    if findings["Cardiomegaly"]:
        chest.ctr = lesion_rng.uniform(0.51, 0.66)
    if findings["Atelectasis"]:
        side = int(lesion_rng.choice((-1, 1)))
        chest.dome_level[side] -= lesion_rng.uniform(0.04, 0.10)
        if lesion_rng.random() < 0.4:
            chest.shift = side * lesion_rng.uniform(0.02, 0.05)
        chest.atelectasis_side = side
    return chest


def _markings(chest: _Chest, side: int) -> np.ndarray:
    """Vessels: lines radiating from the hilum, fading toward the periphery, plus the dense hilum itself."""
    rng = chest.rng
    hx, hy = side * 0.20, -0.05
    dx, dy = chest.x - hx, chest.y - hy
    theta, radius = np.arctan2(dy, dx), np.sqrt(dx * dx + dy * dy)
    wobble = 2.5 * smooth_field(rng, chest.x[0], chest.y[:, 0], 2.5)
    vessels = ((1 + np.cos(rng.uniform(20, 28) * theta + wobble)) / 2) ** 8 * np.exp(-radius / 0.35)
    hilum = np.exp(-((dx / 0.07) ** 2 + (dy / 0.12) ** 2))
    return rng.uniform(0.25, 0.45) * vessels + 0.35 * hilum


def _bones(chest: _Chest) -> np.ndarray:
    rng = chest.rng
    x, y = chest.x, chest.y
    ax = np.abs(x)
    spacing = rng.uniform(0.15, 0.18)
    in_thorax = _sigmoid((THORAX_HALF_WIDTH + 0.04 - ax) / 0.02) * _sigmoid((y + 0.85) / 0.03)
    posterior = (
        (1 + np.cos(2 * np.pi * (y + 0.05 * ax - 0.45 * x * x) / spacing + rng.uniform(0, 2 * np.pi))) / 2
    ) ** 6
    anterior = (
        (1 + np.cos(2 * np.pi * (y - 0.3 * (THORAX_HALF_WIDTH - ax)) / (spacing * 1.1) + rng.uniform(0, 2 * np.pi))) / 2
    ) ** 10
    ribs = (
        in_thorax
        * (rng.uniform(0.06, 0.10) * posterior + 0.03 * anterior)
        * _sigmoid((chest.dome_level[1] + 0.2 - y) / 0.05)
    )
    spine = 0.10 * _sigmoid((0.075 - ax) / 0.01) * (0.8 + 0.2 * np.cos(2 * np.pi * y / 0.1))
    clavicle = (
        0.10
        * np.exp(-(((y + 0.66 + 0.22 * (ax - 0.1)) / 0.035) ** 2))
        * _sigmoid((ax - 0.08) / 0.01)
        * _sigmoid((0.72 - ax) / 0.02)
    )
    return (ribs + spine + clavicle).astype(np.float32)


RENDER_FINDINGS = (
    ("Effusion", _effusion),
    ("Infiltration", _infiltration),
    ("Consolidation", _consolidation),
    ("Mass", _mass),
    ("Nodule", _nodule),
    ("Pneumothorax", _pneumothorax),
)


def render(rng: np.random.Generator, findings: Iterable[str] | dict[str, bool], size: int = SIZE) -> np.ndarray:
    """A uint8 (size, size) chest radiograph showing exactly ``findings`` (names from ``CLASSES``)."""
    present = dict(findings) if isinstance(findings, dict) else {name: True for name in findings}
    unknown = sorted(set(present) - set(CLASSES))
    if unknown:
        raise ValueError(f"unknown finding(s) {unknown}; known: {CLASSES}")
    present = {name: bool(present.get(name, False)) for name in CLASSES}
    chest = _patient(*rng.spawn(2), size, present)
    rng = chest.rng
    fat = rng.uniform(0, 1)
    lungs = {side: chest.lung(side) for side in (-1, 1)}
    heart = chest.heart()
    for side in lungs:
        lungs[side] = lungs[side] * (1 - heart)
    chest.opacity = np.zeros((size, size), dtype=np.float32)
    chest.aerated = {-1: 1.0, 1: 1.0}
    if present["Atelectasis"]:
        _atelectasis_band(chest, chest.atelectasis_side, lungs)
    for name, draw in RENDER_FINDINGS:
        if present[name]:
            draw(chest, lungs)
    return composite(chest, lungs, fat)


def composite(chest: _Chest, lungs: dict[int, np.ndarray], fat: float) -> np.ndarray:
    """Soft tissue, aerated lung filled by the opacity map, trachea, gastric bubble, bones, exposure and noise."""
    rng = chest.rng
    soft = rng.uniform(0.50, 0.62) + 0.10 * fat
    air = rng.uniform(0.10, 0.20) + 0.08 * fat
    background = rng.uniform(0.0, 0.05)
    x, y = chest.x, chest.y
    body = _sigmoid((0.82 + 0.17 * fat - np.abs(x)) / 0.02) * np.where(
        y < -0.85, _sigmoid((0.4 - np.abs(x)) / 0.03), 1.0
    )
    image = background + body * (soft - background)
    for side, lung in lungs.items():
        opacity = np.clip(chest.opacity + _markings(chest, side) * chest.aerated[side], 0, 1)
        image -= lung * (1 - opacity) * (soft - air)
    if chest.lucent is not None:
        image -= chest.lucent
    image -= 0.12 * _sigmoid((0.035 - np.abs(x - 0.5 * chest.shift)) / 0.01) * _sigmoid((-0.30 - y) / 0.02)
    if rng.random() < 0.6:
        bubble = ((x - 0.32) / 0.09) ** 2 + ((y - chest.dome(1, 0.32) - 0.07) / 0.05) ** 2
        image -= 0.15 * _sigmoid((1 - bubble) / 0.15)
    image += _bones(chest)
    image = np.clip(image, 0, 1) ** rng.uniform(0.8, 1.25) * rng.uniform(0.85, 1.1) + rng.uniform(-0.03, 0.05)
    image = ndi.gaussian_filter(image.astype(np.float32), 0.5)
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(rng.uniform(0.01, 0.03))
    return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)


def simulate(rng: np.random.Generator, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One radiograph and its uint8 0/1 finding vector (``CLASSES`` order), findings drawn with ``FINDINGS``."""
    found = draw_findings(rng)
    return render(rng, found, size), np.array([found[name] for name in CLASSES], dtype=np.uint8)


@register(DATASET)
def make_cxr_phantom(out: str | Path, n: int = 1, seed: int = 0, **opts) -> list[Path]:
    """``n`` images ``cxr-00000.png``... with sidecars and ``labels.csv`` under ``out``; option ``size`` (96)."""
    size = image_size(SPEC, opts, SIZE)
    return write_phantom(out, SPEC, n, seed, lambda rng: simulate(rng, size))
