"""Dermoscopy phantom (``derm-phantom``): seeded RGB skin-lesion images in the seven ISIC 2018 Task 3 classes.

Why: the federated classification tools (FedLSM, FCU; ``shared/research/tool_methods.md`` sections 2 and 3) are
benchmarked on ISIC 2018, which is neither shipped nor downloadable here. This generator gives a labelled folder of
any size in seconds, with the same seven classes, about the same class imbalance (HAM10000's counts) and classes
that differ in the structures dermatologists use: the ABCD rule (asymmetry, border, colours, diameter) and
dermoscopic patterns. Every class draws every feature from its own ranges and chances, and the ranges overlap
(a melanoma can be small and symmetric, a naevus can carry a blue-grey blotch, a keratosis can be dark and
multi-coloured), so a classifier has to combine cues: learnable, not trivial.

One image (all lengths in half field widths, the field being [-1, 1] x [-1, 1]; px = pixels at the chosen size)
    1. class: drawn with ``PRIOR`` = HAM10000 counts / 10015 (NV 66.9 %, MEL 11.1 %, BKL 11.0 %, BCC 5.1 %,
       AKIEC 3.3 %, VASC 1.4 %, DF 1.1 %).
    2. skin: a tone between light (0.94, 0.80, 0.72) and dark (0.55, 0.38, 0.28) RGB at t ~ Beta(2, 3), each
       channel x U(0.97, 1.03), mottled by 3 % smooth noise.
    3. lesion outline: radius R = U(diameter) (so the diameter is that fraction of the field width), centre within
       0.5 * (0.85 - R) of the middle. Border radius at angle theta: 1 + sum_k a_k cos(k theta + phi_k), with
       sum |a_1..a_3| = U(asymmetry) (shape asymmetry; k = 2 also elongates) and sum |a_5..a_12| = U(irregularity)
       (notched, irregular border). Opacity = sigmoid((border - r) / U(edge)): a sharp or a fading border.
    4. colour: one base colour from ``base``, each channel x U(0.9, 1.1), darkened toward the centre by U(0, 0.2);
       each colour of ``colours`` is added with its chance as a smooth blotch covering U(0.1, 0.4) of the lesion
       at opacity U(0.45, 0.85): colour variegation (and colour asymmetry), the C of ABCD.
    5. structures, each with its chance (table below), rendered inside the lesion:
       ``network``: regular pigment network, a mesh of cells U(0.07, 0.10) with thin uniform lines fading toward the
       rim; ``atypical``: a warped mesh of wider cells U(0.08, 0.13), thick lines, patchy, ending abruptly;
       ``globules``: 8-30 brown round globules (sigma 1.0-1.6 px) spread evenly; ``dots``: 6-30 black dots
       (0.5-0.9 px) in 1-3 off-centre clusters; ``streaks``: 10-24 radial streaks/pseudopods on part of the rim;
       ``blotch``: an eccentric black blotch; ``veil``: blue-white veil; ``regression``: white scar-like area with
       grey peppering; ``nests``: 2-7 blue-grey ovoid nests; ``arborising``: 2-5 branching red vessels (0.5-1.0 px);
       ``ulcer``: dark red crust; ``lacunae``: 3-9 round red/dark-red/purple lacunae with pale septa; ``white_patch``:
       central white scar-like patch; ``scale``: white-yellow surface scale in patches; ``dotted_vessels``: 20-80
       red dots (0.35-0.55 px); ``milia``: 3-12 white milia-like cysts; ``comedo``: 3-12 dark comedo-like openings;
       ``fissures``: cerebriform fissures and ridges; ``halo``: perilesional erythema.
    6. hair: with chance 0.35, 1-5 dark curved strands (0.4-1.0 px wide) across the field.
    7. light: x (exposure U(0.9, 1.08)) x (1 + gx x + gy y), |g| <= 0.1; with chance 0.4 a dermoscope vignette
       (dark corners beyond r0 = U(0.85, 1.05), strength U(1, 3)). Gaussian noise sigma U(0.006, 0.025); 8-bit.

Class parameters (``LESIONS``; colours: lb light brown, db dark brown, bk black, bg blue-grey, rd red, wh white,
pk pink, tn tan, pu purple, dr dark red; a number is the chance that the colour or structure appears)

=====  ======  =========  =========  =========  =========  ========================  ===================================
class  prior   diameter   asymmetry  irregular  edge       base / extra colours      structures
=====  ======  =========  =========  =========  =========  ========================  ===================================
MEL    0.111   0.35-0.80  0.10-0.35  0.04-0.12  0.02-0.15  db, lb / db .6, lb .5,    atypical .6, network .15, dots .55,
                                                           bk .55, bg .5, rd .35,    streaks .35, blotch .4, veil .35,
                                                           wh .45                    regression .3, globules .1,
                                                                                     dotted_vessels .1
NV     0.669   0.28-0.60  0.00-0.12  0.00-0.04  0.03-0.10  lb, db, tn / db .4,       network .65, atypical .1,
                                                           bk .05, bg .08, rd .05,   globules .35, dots .05,
                                                           wh .03                    streaks .04, blotch .05
BCC    0.051   0.25-0.60  0.05-0.25  0.03-0.09  0.02-0.06  pk, tn / bg .4, wh .45,   nests .7, arborising .7, ulcer .25,
                                                           rd .3, db .25, bk .15     dots .15, halo .2
AKIEC  0.033   0.30-0.65  0.05-0.22  0.03-0.08  0.10-0.25  pk, rd / lb .35, db .15,  scale .75, dotted_vessels .6,
                                                           rd .4, wh .3              network .05, halo .5
BKL    0.110   0.30-0.70  0.05-0.22  0.01-0.06  0.01-0.05  lb, tn, db / db .6,       fissures .55, milia .5, comedo .5,
                                                           bk .25, wh .2, bg .12,    network .2, atypical .1,
                                                           rd .1                     regression .15, blotch .1
DF     0.011   0.22-0.45  0.00-0.12  0.00-0.03  0.12-0.30  lb, pk / db .15, rd .3    white_patch .85, network .65,
                                                                                     dots .1, halo .1
VASC   0.014   0.22-0.50  0.00-0.15  0.00-0.05  0.02-0.06  rd, pu / pu .5, bg .3,    lacunae .9, halo .1
                                                           wh .4, dr .4
=====  ======  =========  =========  =========  =========  ========================  ===================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy.special import ndtri

from macro.data import register
from macro.data.labelled import ISIC_CLASSES, PhantomSpec, image_size, smooth_field, write_phantom

DATASET = "derm-phantom"
CLASSES = ISIC_CLASSES
PRIOR = np.array([1113, 6705, 514, 327, 1099, 115, 142], dtype=np.float64) / 10015
SPEC = PhantomSpec(DATASET, "dermoscopy", "derm", CLASSES, multi_label=False)
SIZE = 96
HAIR_CHANCE = 0.35
VIGNETTE_CHANCE = 0.4
NOISE = (0.006, 0.025)
SKIN_LIGHT = np.array((0.94, 0.80, 0.72), dtype=np.float32)
SKIN_DARK = np.array((0.55, 0.38, 0.28), dtype=np.float32)
COLOURS = {
    name: np.array(rgb, dtype=np.float32)
    for name, rgb in {
        "lb": (0.72, 0.50, 0.34),
        "db": (0.42, 0.26, 0.17),
        "bk": (0.16, 0.11, 0.10),
        "bg": (0.45, 0.50, 0.58),
        "rd": (0.78, 0.30, 0.32),
        "wh": (0.93, 0.90, 0.88),
        "pk": (0.88, 0.60, 0.60),
        "tn": (0.80, 0.62, 0.46),
        "pu": (0.45, 0.20, 0.35),
        "dr": (0.50, 0.10, 0.15),
    }.items()
}


@dataclass(frozen=True)
class LesionClass:
    """Ranges and chances of one class's features; see the module docstring's table."""

    diameter: tuple[float, float]
    asymmetry: tuple[float, float]
    irregularity: tuple[float, float]
    edge: tuple[float, float]
    base: tuple[str, ...]
    colours: dict[str, float]
    structures: dict[str, float]


LESIONS = {
    "MEL": LesionClass(
        (0.35, 0.80),
        (0.10, 0.35),
        (0.04, 0.12),
        (0.02, 0.15),
        ("db", "lb"),
        {"db": 0.6, "lb": 0.5, "bk": 0.55, "bg": 0.5, "rd": 0.35, "wh": 0.45},
        {
            "atypical": 0.6,
            "network": 0.15,
            "dots": 0.55,
            "streaks": 0.35,
            "blotch": 0.4,
            "veil": 0.35,
            "regression": 0.3,
            "globules": 0.1,
            "dotted_vessels": 0.1,
        },
    ),
    "NV": LesionClass(
        (0.28, 0.60),
        (0.00, 0.12),
        (0.00, 0.04),
        (0.03, 0.10),
        ("lb", "db", "tn"),
        {"db": 0.4, "bk": 0.05, "bg": 0.08, "rd": 0.05, "wh": 0.03},
        {"network": 0.65, "atypical": 0.1, "globules": 0.35, "dots": 0.05, "streaks": 0.04, "blotch": 0.05},
    ),
    "BCC": LesionClass(
        (0.25, 0.60),
        (0.05, 0.25),
        (0.03, 0.09),
        (0.02, 0.06),
        ("pk", "tn"),
        {"bg": 0.4, "wh": 0.45, "rd": 0.3, "db": 0.25, "bk": 0.15},
        {"nests": 0.7, "arborising": 0.7, "ulcer": 0.25, "dots": 0.15, "halo": 0.2},
    ),
    "AKIEC": LesionClass(
        (0.30, 0.65),
        (0.05, 0.22),
        (0.03, 0.08),
        (0.10, 0.25),
        ("pk", "rd"),
        {"lb": 0.35, "db": 0.15, "rd": 0.4, "wh": 0.3},
        {"scale": 0.75, "dotted_vessels": 0.6, "network": 0.05, "halo": 0.5},
    ),
    "BKL": LesionClass(
        (0.30, 0.70),
        (0.05, 0.22),
        (0.01, 0.06),
        (0.01, 0.05),
        ("lb", "tn", "db"),
        {"db": 0.6, "bk": 0.25, "wh": 0.2, "bg": 0.12, "rd": 0.1},
        {
            "fissures": 0.55,
            "milia": 0.5,
            "comedo": 0.5,
            "network": 0.2,
            "atypical": 0.1,
            "regression": 0.15,
            "blotch": 0.1,
        },
    ),
    "DF": LesionClass(
        (0.22, 0.45),
        (0.00, 0.12),
        (0.00, 0.03),
        (0.12, 0.30),
        ("lb", "pk"),
        {"db": 0.15, "rd": 0.3},
        {"white_patch": 0.85, "network": 0.65, "dots": 0.1, "halo": 0.1},
    ),
    "VASC": LesionClass(
        (0.22, 0.50),
        (0.00, 0.15),
        (0.00, 0.05),
        (0.02, 0.06),
        ("rd", "pu"),
        {"pu": 0.5, "bg": 0.3, "wh": 0.4, "dr": 0.4},
        {"lacunae": 0.9, "halo": 0.1},
    ),
}


@dataclass
class _Lesion:
    """One lesion being painted: geometry in lesion radii and the colour/opacity layers structures edit."""

    rng: np.random.Generator
    size: int
    radius: float
    centre: tuple[float, float]
    u: np.ndarray  # (W,) x in lesion radii from the centre
    v: np.ndarray  # (H,) y in lesion radii
    z: np.ndarray  # (H, W) complex position u + i v
    r: np.ndarray  # (H, W) |z| / border: 1 on the border
    mask: np.ndarray  # (H, W) lesion opacity
    colour: np.ndarray  # (H, W, 3)
    alpha: np.ndarray  # (H, W) final opacity (streaks can reach past the border)
    halo: np.ndarray | None = None  # (H, W) erythema on the surrounding skin

    def px(self, pixels: float) -> float:
        """A length of ``pixels`` in lesion radii."""
        return pixels * 2.0 / self.size / self.radius

    def paint(self, rgb: np.ndarray, weight: np.ndarray) -> None:
        self.colour += weight[..., None] * (rgb - self.colour)

    def field(self, cycles: float, waves: int = 6) -> np.ndarray:
        return smooth_field(self.rng, self.u, self.v, cycles, waves)

    def blotch(self, coverage: float, softness: float = 0.25, cycles: float = 0.8) -> np.ndarray:
        """A smooth random patch covering about ``coverage`` of the lesion."""
        return _sigmoid((self.field(cycles) - ndtri(1.0 - coverage)) / softness)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 + 0.5 * np.tanh(0.5 * x)).astype(np.float32)


def _spots(lesion: _Lesion, positions: np.ndarray, sigma_px: float) -> np.ndarray:
    """Round spots (peak about 1) at complex ``positions`` in lesion radii: impulses blurred by a Gaussian."""
    size = lesion.size
    scale = lesion.radius * size / 2.0
    cx, cy = lesion.centre
    cols = np.floor((cx + 1) * size / 2 + positions.real * scale).astype(np.int64)
    rows = np.floor((cy + 1) * size / 2 + positions.imag * scale).astype(np.int64)
    keep = (cols >= 0) & (cols < size) & (rows >= 0) & (rows < size)
    impulses = np.zeros((size, size), dtype=np.float32)
    np.add.at(impulses, (rows[keep], cols[keep]), 1.0)
    spots = ndi.gaussian_filter(impulses, sigma_px) * np.float32(2 * np.pi * sigma_px * sigma_px)
    return np.minimum(spots, 1.0)


def _in_disc(rng: np.random.Generator, count: int, radius: float) -> np.ndarray:
    return radius * np.sqrt(rng.random(count)) * np.exp(2j * np.pi * rng.random(count))


def _point(rng: np.random.Generator, radius: float) -> complex:
    """One uniform point of the disc as a Python complex, so float32/complex64 maps stay single precision."""
    return complex(_in_disc(rng, 1, radius)[0])


def _turn(angle: float) -> complex:
    return complex(np.cos(angle), np.sin(angle))


# ---------------------------------------------------------------- structures (each paints one pattern)


def _network(lesion: _Lesion, atypical: bool) -> None:
    rng = lesion.rng
    cell = (rng.uniform(0.08, 0.13) if atypical else rng.uniform(0.07, 0.10)) / lesion.radius
    angle = rng.uniform(0, np.pi)
    c, s = np.float32(np.cos(angle) / cell), np.float32(np.sin(angle) / cell)
    warp = np.float32(rng.uniform(0.3, 0.7) if atypical else rng.uniform(0.05, 0.15))
    pu = lesion.u[None, :] * c + lesion.v[:, None] * s + warp * lesion.field(1.0)
    pv = lesion.v[:, None] * c - lesion.u[None, :] * s + warp * lesion.field(1.0)
    line = np.minimum(np.abs(np.sin(np.pi * pu)), np.abs(np.sin(np.pi * pv)))
    width = rng.uniform(0.3, 0.55) if atypical else rng.uniform(0.25, 0.35)
    lines = np.exp(-((line / width) ** 2))
    if atypical:
        strength = rng.uniform(0.4, 0.75) * np.clip(0.5 + 0.6 * lesion.field(0.7), 0, 1)
    else:
        strength = rng.uniform(0.35, 0.6) * np.clip(1 - lesion.r**3, 0, 1)
    lesion.colour *= (1 - 0.55 * lines * strength * lesion.mask)[..., None]


def _globules(lesion: _Lesion) -> None:
    rng = lesion.rng
    spots = _spots(lesion, _in_disc(rng, int(rng.integers(8, 31)), 0.8), rng.uniform(1.0, 1.6))
    lesion.paint(COLOURS["db"] * 0.8, spots * rng.uniform(0.6, 0.9) * lesion.mask)


def _dots(lesion: _Lesion) -> None:
    rng = lesion.rng
    clusters = _in_disc(rng, int(rng.integers(1, 4)), 0.7)
    count = int(rng.integers(6, 31))
    positions = clusters[rng.integers(len(clusters), size=count)] + 0.25 * (
        rng.standard_normal(count) + 1j * rng.standard_normal(count)
    )
    spots = _spots(lesion, positions, rng.uniform(0.5, 0.9))
    lesion.paint(COLOURS["bk"], spots * rng.uniform(0.6, 0.95) * lesion.mask)


def _streaks(lesion: _Lesion) -> None:
    rng = lesion.rng
    theta = np.angle(lesion.z)
    rays = _sigmoid((np.cos(int(rng.integers(10, 25)) * theta + rng.uniform(0, 2 * np.pi)) - 0.6) / 0.08)
    ring = np.exp(-(((lesion.r - 1.0) / 0.12) ** 2))
    weight = rays * ring * lesion.blotch(rng.uniform(0.3, 0.7), cycles=0.6) * rng.uniform(0.6, 0.9)
    lesion.paint(COLOURS["db"] * 0.8, weight)
    np.maximum(lesion.alpha, weight, out=lesion.alpha)


def _blotch(lesion: _Lesion) -> None:
    rng = lesion.rng
    where = rng.uniform(0.3, 0.6) * _turn(2 * np.pi * rng.random())
    weight = np.exp(-((np.abs(lesion.z - where) / rng.uniform(0.25, 0.45)) ** 2)) * rng.uniform(0.6, 0.95)
    lesion.paint(COLOURS["bk"], weight * lesion.mask)


def _veil(lesion: _Lesion) -> None:
    rng = lesion.rng
    weight = lesion.blotch(rng.uniform(0.2, 0.5), softness=0.3) * rng.uniform(0.5, 0.8)
    lesion.paint(np.array((0.58, 0.63, 0.70), dtype=np.float32), weight * lesion.mask)


def _regression(lesion: _Lesion) -> None:
    rng = lesion.rng
    area = lesion.blotch(rng.uniform(0.1, 0.3)) * lesion.mask
    lesion.paint(np.array((0.90, 0.87, 0.86), dtype=np.float32), area * rng.uniform(0.5, 0.85))
    pepper = _spots(lesion, _in_disc(rng, int(rng.integers(20, 60)), 0.9), 0.5)
    lesion.paint(np.array((0.45, 0.45, 0.50), dtype=np.float32), pepper * area * 0.8)


def _nests(lesion: _Lesion) -> None:
    rng = lesion.rng
    count = int(rng.integers(2, 8))
    centres = _in_disc(rng, count, 0.75)
    weight = np.zeros(lesion.mask.shape, dtype=np.float32)
    for centre in centres.tolist():
        local = (lesion.z - centre) * (_turn(-rng.uniform(0, np.pi)) / rng.uniform(0.12, 0.3))
        aspect = rng.uniform(1.2, 2.0)
        distance = np.sqrt((local.real / aspect) ** 2 + local.imag**2)
        np.maximum(weight, _sigmoid((1 - distance) / 0.12), out=weight)
    lesion.paint(np.array((0.30, 0.36, 0.48), dtype=np.float32), weight * rng.uniform(0.7, 0.9) * lesion.mask)


def _curve_weight(
    lesion: _Lesion, z: np.ndarray, width: float, bend: float, wiggle: float, length: float
) -> np.ndarray:
    """A thin curved line through ``z``'s origin along its real axis: Gaussian profile of half-width ``width``."""
    rng = lesion.rng
    path = bend * z.real**2 + wiggle * np.sin(rng.uniform(2, 6) * z.real + rng.uniform(0, 2 * np.pi))
    return np.exp(-(((z.imag - path) / width) ** 2)) * (np.abs(z.real) < length)


def _arborising(lesion: _Lesion) -> None:
    rng = lesion.rng
    weight = np.zeros(lesion.mask.shape, dtype=np.float32)
    for _ in range(int(rng.integers(2, 6))):
        local = (lesion.z - _point(rng, 0.5)) * _turn(-rng.uniform(0, np.pi))
        vessel = _curve_weight(
            lesion,
            local,
            lesion.px(rng.uniform(0.5, 1.0)),
            rng.uniform(-0.8, 0.8),
            rng.uniform(0, 0.08),
            rng.uniform(0.4, 0.9),
        )
        np.maximum(weight, vessel, out=weight)
    lesion.paint(np.array((0.72, 0.10, 0.16), dtype=np.float32), weight * rng.uniform(0.7, 0.95) * lesion.mask)


def _ulcer(lesion: _Lesion) -> None:
    rng = lesion.rng
    weight = lesion.blotch(rng.uniform(0.05, 0.15), softness=0.15) * rng.uniform(0.7, 0.95)
    lesion.paint(np.array((0.45, 0.15, 0.12), dtype=np.float32), weight * lesion.mask)


def _lacunae(lesion: _Lesion) -> None:
    rng = lesion.rng
    count = int(rng.integers(3, 10))
    centres = _in_disc(rng, count, 0.7)
    radii = rng.uniform(0.15, 0.35, count).astype(np.float32)
    palette = np.stack([COLOURS[rng.choice(("rd", "dr", "pu"))] * rng.uniform(0.85, 1.1) for _ in range(count)]).astype(
        np.float32
    )
    member = _sigmoid(
        (radii[:, None, None] - np.abs(lesion.z[None] - centres[:, None, None].astype(np.complex64))) / 0.05
    )
    nearest = member.argmax(axis=0)
    weight = np.take_along_axis(member, nearest[None], axis=0)[0]
    lesion.colour += (weight * lesion.mask * rng.uniform(0.8, 1.0))[..., None] * (palette[nearest] - lesion.colour)


def _white_patch(lesion: _Lesion) -> None:
    rng = lesion.rng
    where = _point(rng, 0.2)
    weight = np.exp(-((np.abs(lesion.z - where) / rng.uniform(0.3, 0.55)) ** 2)) * rng.uniform(0.6, 0.95)
    lesion.paint(np.array((0.94, 0.92, 0.90), dtype=np.float32), weight * lesion.mask)


def _scale(lesion: _Lesion) -> None:
    rng = lesion.rng
    grain = ndi.gaussian_filter(rng.standard_normal(lesion.mask.shape).astype(np.float32), 0.8)
    grain /= grain.std()
    flakes = _sigmoid((grain - ndtri(1 - rng.uniform(0.2, 0.5))) / 0.3)
    weight = flakes * lesion.blotch(rng.uniform(0.4, 0.8)) * rng.uniform(0.6, 0.9)
    lesion.paint(np.array((0.93, 0.90, 0.80), dtype=np.float32), weight * lesion.mask)


def _dotted_vessels(lesion: _Lesion) -> None:
    rng = lesion.rng
    spots = _spots(lesion, _in_disc(rng, int(rng.integers(20, 81)), 0.9), rng.uniform(0.35, 0.55))
    lesion.paint(np.array((0.70, 0.12, 0.15), dtype=np.float32), spots * rng.uniform(0.6, 0.9) * lesion.mask)


def _milia(lesion: _Lesion) -> None:
    rng = lesion.rng
    spots = _spots(lesion, _in_disc(rng, int(rng.integers(3, 13)), 0.8), rng.uniform(0.7, 1.1))
    lesion.paint(np.array((0.95, 0.93, 0.85), dtype=np.float32), spots * rng.uniform(0.6, 0.9) * lesion.mask)


def _comedo(lesion: _Lesion) -> None:
    rng = lesion.rng
    spots = _spots(lesion, _in_disc(rng, int(rng.integers(3, 13)), 0.8), rng.uniform(0.7, 1.1))
    lesion.paint(np.array((0.20, 0.13, 0.10), dtype=np.float32), spots * rng.uniform(0.6, 0.9) * lesion.mask)


def _fissures(lesion: _Lesion) -> None:
    rng = lesion.rng
    folds = np.cos(rng.uniform(2.5, 4.0) * lesion.field(rng.uniform(1.5, 2.5)))
    weight = _sigmoid((folds - 0.75) / 0.08) * rng.uniform(0.4, 0.7)
    lesion.paint(COLOURS["db"] * 0.7, weight * lesion.mask)


def _halo(lesion: _Lesion) -> None:
    lesion.halo = (
        np.exp(-(((lesion.r - 1.1) / 0.35) ** 2)) * (1 - lesion.mask) * lesion.rng.uniform(0.15, 0.35)
    ).astype(np.float32)


STRUCTURES = {
    "network": lambda lesion: _network(lesion, atypical=False),
    "atypical": lambda lesion: _network(lesion, atypical=True),
    "globules": _globules,
    "dots": _dots,
    "streaks": _streaks,
    "blotch": _blotch,
    "veil": _veil,
    "regression": _regression,
    "nests": _nests,
    "arborising": _arborising,
    "ulcer": _ulcer,
    "lacunae": _lacunae,
    "white_patch": _white_patch,
    "scale": _scale,
    "dotted_vessels": _dotted_vessels,
    "milia": _milia,
    "comedo": _comedo,
    "fissures": _fissures,
    "halo": _halo,
}


# ---------------------------------------------------------------- one image


def _grid(size: int) -> np.ndarray:
    return ((np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0).astype(np.float32)


def _outline(rng: np.random.Generator, params: LesionClass, size: int) -> _Lesion:
    axis = _grid(size)
    radius = float(rng.uniform(*params.diameter))
    centre = tuple(float(c) for c in rng.uniform(-1, 1, 2) * max(0.0, 0.85 - radius) * 0.5)
    u = ((axis - centre[0]) / radius).astype(np.float32)
    v = ((axis - centre[1]) / radius).astype(np.float32)
    z = (u[None, :] + 1j * v[:, None]).astype(np.complex64)
    modulus = np.abs(z)
    unit = z / np.maximum(modulus, 1e-6)
    coeffs = np.zeros(13, dtype=np.complex64)
    low = rng.uniform(0.5, 1.0, 3) * (0.6, 0.5, 0.4)
    high = rng.uniform(0.0, 1.0, 8)
    coeffs[1:4] = rng.uniform(*params.asymmetry) * low / low.sum()
    coeffs[5:13] = rng.uniform(*params.irregularity) * high / high.sum()
    coeffs *= np.exp(2j * np.pi * rng.random(13)).astype(np.complex64)
    border = 1.0 + np.polyval(coeffs[::-1], unit).real
    mask = _sigmoid((border - modulus) / rng.uniform(*params.edge))
    shape = mask.shape
    return _Lesion(
        rng,
        size,
        radius,
        centre,
        u,
        v,
        z,
        (modulus / border).astype(np.float32),
        mask,
        np.zeros(shape + (3,), dtype=np.float32),
        mask.copy(),
    )


def _paint(lesion: _Lesion, params: LesionClass) -> None:
    rng = lesion.rng
    base = COLOURS[params.base[int(rng.integers(len(params.base)))]] * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    lesion.colour[:] = base
    lesion.colour *= (1 - rng.uniform(0, 0.2) * np.clip(1 - lesion.r**2, 0, 1))[..., None]
    for name, chance in params.colours.items():
        if rng.random() < chance:
            lesion.paint(
                COLOURS[name] * rng.uniform(0.9, 1.1, 3).astype(np.float32),
                lesion.blotch(rng.uniform(0.1, 0.4)) * (lesion.mask * np.float32(rng.uniform(0.45, 0.85))),
            )
    for name, chance in params.structures.items():
        if rng.random() < chance:
            STRUCTURES[name](lesion)


def _skin(rng: np.random.Generator, axis: np.ndarray) -> np.ndarray:
    tone = SKIN_LIGHT + np.float32(rng.beta(2, 3)) * (SKIN_DARK - SKIN_LIGHT)
    tone = tone * rng.uniform(0.97, 1.03, 3).astype(np.float32)
    mottle = 1 + 0.03 * smooth_field(rng, axis, axis, 1.5)
    return mottle[..., None] * tone


def _hair(rng: np.random.Generator, image: np.ndarray, axis: np.ndarray) -> None:
    """1-5 thin dark curved strands, painted in one pass with one hair colour."""
    size = len(axis)
    hair = np.zeros((size, size), dtype=np.float32)
    for _ in range(int(rng.integers(1, 6))):
        x0, y0 = (float(c) for c in rng.uniform(-0.9, 0.9, 2))
        angle = rng.uniform(0, np.pi)
        c, s = np.cos(angle), np.sin(angle)
        along = (axis[None, :] - x0) * np.float32(c) + (axis[:, None] - y0) * np.float32(s)
        across = (axis[:, None] - y0) * np.float32(c) - (axis[None, :] - x0) * np.float32(s)
        path = rng.uniform(-0.3, 0.3) * along**2 + rng.uniform(0, 0.05) * np.sin(
            rng.uniform(2, 6) * along + rng.uniform(0, 6.3)
        )
        width = rng.uniform(0.4, 1.0) * 2.0 / size
        np.maximum(hair, np.exp(-(((across - path) / np.float32(width)) ** 2)), out=hair)
    colour = np.float32(rng.uniform(0.12, 0.3)) * np.array((1.0, 0.85, 0.75), dtype=np.float32)
    image += (hair * np.float32(rng.uniform(0.75, 0.95)))[..., None] * (colour - image)


def _light(rng: np.random.Generator, axis: np.ndarray) -> np.ndarray:
    gx, gy = rng.uniform(-0.1, 0.1, 2)
    light = rng.uniform(0.9, 1.08) * (1 + gx * axis[None, :] + gy * axis[:, None])
    if rng.random() < VIGNETTE_CHANCE:
        radius = np.hypot(axis[None, :], axis[:, None])
        light = light * (1 - rng.uniform(1, 3) * np.clip(radius - rng.uniform(0.85, 1.05), 0, None) ** 2)
    return np.clip(light, 0, None).astype(np.float32)


def render(rng: np.random.Generator, name: str, size: int = SIZE) -> np.ndarray:
    """A uint8 (size, size, 3) dermoscopy image of class ``name`` drawn from ``rng``."""
    params = LESIONS[name]
    axis = _grid(size)
    lesion = _outline(rng, params, size)
    _paint(lesion, params)
    image = _skin(rng, axis)
    if lesion.halo is not None:
        image += lesion.halo[..., None] * (np.array((0.85, 0.50, 0.50), dtype=np.float32) - image)
    image += lesion.alpha[..., None] * (lesion.colour - image)
    if rng.random() < HAIR_CHANCE:
        _hair(rng, image, axis)
    image *= _light(rng, axis)[..., None]
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    noise *= np.float32(rng.uniform(*NOISE))
    image += noise
    image *= 255
    image += 0.5
    return np.clip(image, 0, 255, out=image).astype(np.uint8)


def simulate(rng: np.random.Generator, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One image and its one-hot uint8 label (``CLASSES`` order), the class drawn with ``PRIOR``."""
    index = int(rng.choice(len(CLASSES), p=PRIOR))
    labels = np.zeros(len(CLASSES), dtype=np.uint8)
    labels[index] = 1
    return render(rng, CLASSES[index], size), labels


@register(DATASET)
def make_derm_phantom(out: str | Path, n: int = 1, seed: int = 0, **opts) -> list[Path]:
    """``n`` images ``derm-00000.png``... with sidecars and ``labels.csv`` under ``out``; option ``size`` (96)."""
    size = image_size(SPEC, opts, SIZE)
    return write_phantom(out, SPEC, n, seed, lambda rng: simulate(rng, size))
