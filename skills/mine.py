"""Mining composite tools from recorded trajectories (agent_methods.md §1.6, peers.md §2: ASI/TroVE/ReGAL).

A candidate is a contiguous chain of successful atomic calls that recurs across trajectories:
* support: verified trajectories that contain it; reliability: its verified share among verified + failed
  trajectories that contain it (unverified runs say nothing either way and are ignored);
* association at every split: for each way to cut the chain in two, its halves must belong together, by either
  of two tests. Lift: the chain occurs ``min_lift`` times more often than its halves would side by side by
  chance (occurrences × recorded calls / (left × right)), with the occurrences taken at a Poisson lower bound
  (n − 2√n) so a handful of chance hits cannot pass. Confidence: each half is joined to the other in at least
  ``min_confidence`` of its own occurrences; this is what holds in a log of only a few task types, where every
  tool is frequent and lift cannot exceed a small constant. Without these, a real chain plus whichever call
  sits next to it, or two real chains that often run back to back, form a frequent "longer chain";
* score = support × (length − 1) × reliability: a composite saves ``length − 1`` decisions per use, so long
  reliable chains rank first;
* closed-pattern dedup, relaxed: a chain is dropped when a longer candidate containing it holds at least
  ``closed_ratio`` of its support (strict closedness, equal support, keeps fragments of a chain that noise
  occasionally completes elsewhere);
* bindings from the recorded data flow, over the chain's occurrences: an input artifact slot is bound to the
  earlier step whose output it consumed, an argument to an earlier step's result field whose value it copied,
  each only when the same mapping holds in at least ``bind_rate`` of occurrences. A literal that is the same in
  that share becomes an overridable default; every other argument seen becomes a parameter.

Deviation from the reconstruction's open points: mining is over tool names (not arguments), so one chain with
varying arguments is one composite with parameters, instead of many near-duplicates.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable

from macro.skills.composite import Composite


@dataclass
class MineConfig:
    min_support: int = 5
    min_reliability: float = 0.8
    min_lift: float = 3.0
    min_confidence: float = 0.5
    min_length: int = 2
    max_length: int = 5
    closed_ratio: float = 0.8
    bind_rate: float = 0.8
    max_occurrences: int = 200
    max_candidates: int = 20


def atomic_steps(steps: list[dict]) -> list[dict]:
    """Every atomic call in order, failed ones included; a composite's recorded children stand in for it."""
    out = []
    for step in steps:
        out += atomic_steps(step["children"]) if step.get("children") else [step]
    return out


def flat_steps(steps: list[dict]) -> list[dict]:
    """Successful atomic calls in order; a composite's recorded children stand in for it."""
    return [step for step in atomic_steps(steps) if step.get("ok")]


def mine(trajectories: Iterable, cfg: MineConfig | None = None) -> list[Composite]:
    """Candidates, best score first, each with bindings, parameters and provenance (not yet verified).

    Runs are mined per task family: a chain that is reliable for one family (segment then measure on source
    scans) must not be rejected because the same calls fail on another family's harder cases, nor admitted on
    the strength of a family where it happens to pass. A chain found in several families is kept once, from the
    family where it scores best, with the others listed."""
    cfg = cfg or MineConfig()
    start = time.perf_counter()
    families: dict[str, list] = defaultdict(list)
    for traj in trajectories:
        body = traj if isinstance(traj, dict) else traj.to_dict()
        if body.get("verification") in ("verified", "failed"):
            steps = flat_steps(body["steps"])
            families[body.get("family", "")].append(
                (body["id"], body["verification"] == "verified", steps, tuple(s["tool"] for s in steps))
            )
    best: dict[tuple, tuple] = {}
    found_in: dict[tuple, list[str]] = defaultdict(list)
    for family, runs in sorted(families.items()):
        for chain, stats in _candidates(runs, cfg).items():
            found_in[chain].append(family)
            if chain not in best or _score(*stats[:2], len(chain)) > _score(*best[chain][1][:2], len(chain)):
                best[chain] = (family, stats, runs)
    ranked = sorted(best, key=lambda c: (-_score(*best[c][1][:2], len(c)), c))[: cfg.max_candidates]
    seconds = time.perf_counter() - start
    out = []
    for chain in ranked:
        family, (support, reliability, lift, confidence, failed), runs = best[chain]
        occurrences = _occurrences([chain], runs, cfg.max_occurrences)[chain]
        comp = bind(chain, [steps for _, steps in occurrences], cfg.bind_rate)
        comp.provenance = {
            "family": family,
            "families": found_in[chain],
            "support": support,
            "failed": failed,
            "reliability": round(reliability, 4),
            "lift": round(lift, 2),
            "confidence": round(confidence, 3),
            "score": round(_score(support, reliability, len(chain)), 3),
            "trajectories": sorted({tid for tid, _ in occurrences})[:50],
            "mined_from": len(runs),
            "mining_seconds": round(seconds, 3),
        }
        out.append(comp)
    return out


def _candidates(runs: list, cfg: MineConfig) -> dict[tuple, tuple]:
    """Chains of one family's runs that pass support, reliability and association, after closed dedup."""
    verified, failed = Counter(), Counter()
    for _, ok, _, tools in runs:
        (verified if ok else failed).update(_chains(tools, 1, cfg.max_length))
    seen = verified + failed
    calls = sum(len(tools) for *_, tools in runs)
    candidates = {}
    for chain, support in verified.items():
        if len(chain) < cfg.min_length:
            continue
        reliability = support / seen[chain]
        if support < cfg.min_support or reliability < cfg.min_reliability:
            continue
        n = seen[chain]
        splits = [(seen[chain[:k]], seen[chain[k:]]) for k in range(1, len(chain))]
        lift = min(max(n - 2 * math.sqrt(n), 0.0) * calls / (left * right) for left, right in splits)
        confidence = min(n / max(left, right) for left, right in splits)
        if lift >= cfg.min_lift or confidence >= cfg.min_confidence:
            candidates[chain] = (support, reliability, lift, confidence, failed[chain])
    return {c: v for c, v in candidates.items() if not _absorbed(c, candidates, cfg.closed_ratio)}


def _chains(tools: tuple[str, ...], lo: int, hi: int) -> set[tuple[str, ...]]:
    return {tools[i : i + n] for n in range(lo, min(hi, len(tools)) + 1) for i in range(len(tools) - n + 1)}


def _score(support: int, reliability: float, length: int) -> float:
    return support * (length - 1) * reliability


def _contains(longer: tuple, shorter: tuple) -> bool:
    n = len(shorter)
    return any(longer[i : i + n] == shorter for i in range(len(longer) - n + 1))


def _absorbed(chain: tuple, candidates: dict, ratio: float) -> bool:
    support = candidates[chain][0]
    return any(
        len(other) > len(chain) and candidates[other][0] >= ratio * support and _contains(other, chain)
        for other in candidates
    )


def _occurrences(chains: list[tuple], runs: list, cap: int) -> dict[tuple, list[tuple[str, list[dict]]]]:
    """Up to ``cap`` verified occurrences per chain (the first in each trajectory), for inferring bindings."""
    found: dict[tuple, list] = defaultdict(list)
    by_length = defaultdict(set)
    for chain in chains:
        by_length[len(chain)].add(chain)
    for tid, ok, steps, tools in runs:
        if not ok:
            continue
        seen = set()
        for n, wanted in by_length.items():
            for i in range(len(tools) - n + 1):
                chain = tools[i : i + n]
                if chain in wanted and chain not in seen and len(found[chain]) < cap:
                    seen.add(chain)
                    found[chain].append((tid, steps[i : i + n]))
    return found


def bind(chain: tuple[str, ...], occurrences: list[list[dict]], rate: float) -> Composite:
    """A composite for ``chain`` with the bindings that hold in at least ``rate`` of ``occurrences``."""
    need = rate * len(occurrences)
    steps, params = [], {}
    arg_names = Counter(
        a for j in range(len(chain)) for a in {a for occ in occurrences for a in occ[j].get("args", {})}
    )
    for j, tool in enumerate(chain):
        step = {"tool": tool, "args": {}, "inputs": {}}
        slots = {s for occ in occurrences for s in occ[j].get("inputs", {}) if s != "case"}
        for slot in sorted(slots):
            sources = Counter(_producer(occ, j, occ[j]["inputs"].get(slot)) for occ in occurrences)
            source, count = sources.most_common(1)[0]
            if source is not None and count >= need:
                step["inputs"][slot] = source
        for arg in sorted({a for occ in occurrences for a in occ[j].get("args", {})}):
            values = [occ[j].get("args", {}).get(arg) for occ in occurrences]
            field = _copied_field(occurrences, j, values, need)
            if field is not None:
                step["args"][arg] = {"from": {"step": field[0], "field": field[1]}}
                continue
            name = arg if arg_names[arg] == 1 else f"{arg}_{j + 1}"
            param = {"tool": tool, "arg": arg}
            value, count = Counter(map(_key, values)).most_common(1)[0]
            if count >= need and value is not None:
                param["default"] = next(v for v in values if _key(v) == value)
            params[name] = param
            step["args"][arg] = {"param": name}
        steps.append(step)
    name = "_then_".join(t.split("_")[0] for t in chain)[:48]
    return Composite(
        name=name, steps=steps, params=params, description=f"Runs {' -> '.join(chain)} in one call (mined skill)."
    )


def _producer(occ: list[dict], j: int, artifact: str | None) -> int | None:
    if artifact is None:
        return None
    return next((i for i in range(j - 1, -1, -1) if artifact in occ[i].get("outputs", [])), None)


def _copied_field(occurrences: list[list[dict]], j: int, values: list, need: float) -> tuple[int, str] | None:
    """An earlier step's result field that this argument copied, if its values vary (a constant is a default)."""
    if len({_key(v) for v in values}) < 2:
        return None
    counts = Counter()
    for occ, value in zip(occurrences, values):
        if value is None:
            continue
        for i in range(j):
            for key, got in occ[i].get("data", {}).items():
                if _key(got) == _key(value):
                    counts[(i, key)] += 1
    if counts:
        best, count = counts.most_common(1)[0]
        if count >= need:
            return best
    return None


def _key(value):
    """Hashable form of an argument value (lists and dicts appear in tool arguments)."""
    if isinstance(value, (list, dict)):
        return repr(value)
    return value
