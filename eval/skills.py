"""Mining speed on synthetic trajectory logs (issue target: 100k trajectories in under 10 s on 2 cores).

Each size is generated once, then mined ``repeats`` times; the median is reported with the recovery check
(whether exactly the planted chains came out), so a fast miner that finds the wrong thing does not pass.
"""

from __future__ import annotations

import statistics
import time

from macro.skills.mine import mine
from macro.skills.synthetic import PLANTED, synthetic_trajectories


def mining_benchmark(sizes=(10_000, 100_000), repeats: int = 3, seed: int = 0, log=None) -> dict:
    out = {}
    planted = {tools for tools, _, _ in PLANTED.values()}
    for n in sizes:
        runs = synthetic_trajectories(n, seed)
        steps = sum(len(r["steps"]) for r in runs)
        times, found = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            found = mine(runs)
            times.append(time.perf_counter() - start)
        out[str(n)] = {
            "trajectories": n,
            "steps": steps,
            "seconds_median": round(statistics.median(times), 3),
            "seconds_all": [round(t, 3) for t in times],
            "recovered_planted": {c.tools for c in found} == planted,
        }
        if log:
            log(
                f"{n} trajectories ({steps} steps): {out[str(n)]['seconds_median']} s median, planted chains "
                f"recovered: {out[str(n)]['recovered_planted']}"
            )
    return out
