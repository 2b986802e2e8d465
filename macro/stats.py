"""The statistics every evaluation and the benchmark share, so that one figure means the same thing everywhere.

- :func:`bootstrap_ci`: a percentile bootstrap interval of a mean, optionally resampled within strata (the
  benchmark's seeds), for per-episode or per-image values;
- :func:`paired`: method minus baseline on the same items, with a paired bootstrap interval and, for successes
  (0/1), the exact McNemar p-value;
- :func:`over_seeds`: mean over independent seeds with a Student-t interval (three seeds are too few to bootstrap);
- :func:`proportion_ci`: Wilson's interval of a share of successes out of ``n`` items, for deterministic
  evaluations on a fixed set (a bootstrap collapses to a point at 0 % or 100 %);
- :func:`pairs_needed` and :func:`min_detectable_difference`: how many pairs a paired difference in success needs
  to be detected with the given power, and the smallest one ``n`` pairs detect (McNemar's test, Connor's normal
  approximation): the size argument behind a claim.

Intervals are two-sided at :data:`LEVEL`; every resampling takes a seed, so a report is reproducible.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats as sps

BOOTSTRAP = 2000
LEVEL = 0.95


def bootstrap_ci(
    values: Sequence[float],
    strata: Sequence | None = None,
    *,
    resamples: int = BOOTSTRAP,
    level: float = LEVEL,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile interval of the mean. With ``strata``, each resample draws within each stratum as many values as it
    holds (seeds keep their weight). None when there are no values."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return None
    keys = np.zeros(len(values), dtype=int) if strata is None else np.unique(np.asarray(strata), return_inverse=True)[1]
    groups = [values[keys == k] for k in np.unique(keys)]
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for i in range(resamples):
        means[i] = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups]).mean()
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def mcnemar(a: Sequence[float], b: Sequence[float]) -> float:
    """Exact two-sided McNemar p-value for paired successes: a binomial test on the discordant pairs (1.0 when there
    are none)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired successes need equal lengths, got {a.size} and {b.size}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(sps.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def paired(
    method: Sequence[float],
    baseline: Sequence[float],
    *,
    resamples: int = BOOTSTRAP,
    level: float = LEVEL,
    seed: int = 0,
) -> dict:
    """``method - baseline`` item by item: mean difference, its paired bootstrap interval, the number of pairs and,
    when both are 0/1 successes, the exact McNemar p-value and the share of discordant pairs."""
    a, b = np.asarray(method, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal lengths, got {a.size} and {b.size}")
    if a.size == 0:
        raise ValueError("no pairs to compare")
    diffs = a - b
    out = {
        "delta": float(diffs.mean()),
        "ci": list(bootstrap_ci(diffs, resamples=resamples, level=level, seed=seed)),
        "n": int(a.size),
    }
    if np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all():
        out["p_mcnemar"] = mcnemar(a, b)
        out["discordant"] = float((a != b).mean())
    return out


def proportion_ci(successes: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of ``successes / n`` (a fraction): it stays inside [0, 1] and is not a point when every
    item or none succeeded."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes} of {n}")
    z = float(sps.norm.ppf(0.5 + level / 2))
    share = successes / n
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (0.0 if successes == 0 else centre - half), (1.0 if successes == n else centre + half)


def over_seeds(values: Sequence[float], level: float = LEVEL) -> dict:
    """Mean of one figure over independent seeds with a Student-t interval; one seed gives no interval."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no seeds to summarise")
    mean = float(values.mean())
    if values.size < 2:
        return {"mean": mean, "ci": None, "sd": None, "seeds": 1}
    sd = float(values.std(ddof=1))
    half = float(sps.t.ppf(0.5 + level / 2, values.size - 1)) * sd / math.sqrt(values.size)
    return {"mean": mean, "ci": [mean - half, mean + half], "sd": sd, "seeds": int(values.size)}


def pairs_needed(difference: float, discordant: float, alpha: float = 1 - LEVEL, power: float = 0.8) -> float:
    """Pairs that detect a true paired difference ``difference`` in success rate (a fraction) with ``power`` at
    two-sided ``alpha`` when a share ``discordant`` of pairs differ (Connor 1987:
    ``n = (z_a sqrt(psi) + z_b sqrt(psi - d^2))^2 / d^2``)."""
    if not 0 < difference <= discordant <= 1:
        raise ValueError(f"need 0 < difference <= discordant share <= 1, got {difference} and {discordant}")
    z_a, z_b = sps.norm.ppf(1 - alpha / 2), sps.norm.ppf(power)
    spread = z_a * math.sqrt(discordant) + z_b * math.sqrt(discordant - difference * difference)
    return spread**2 / difference**2


def min_detectable_difference(n: int, discordant: float, alpha: float = 1 - LEVEL, power: float = 0.8) -> float:
    """The smallest true paired difference that ``n`` pairs detect (the inverse of :func:`pairs_needed`); ``inf``
    when even ``difference = discordant`` (every discordant pair favouring one side) is out of reach."""
    if n <= 0 or not 0 < discordant <= 1:
        raise ValueError(f"need n > 0 pairs and a discordant share in (0, 1], got {n} and {discordant}")
    lo, hi = 1e-9, discordant
    if pairs_needed(hi, discordant, alpha, power) > n:
        return math.inf
    for _ in range(100):  # pairs_needed falls as the difference grows: bisect for where n pairs suffice
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if pairs_needed(mid, discordant, alpha, power) > n else (lo, mid)
    return hi
