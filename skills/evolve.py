"""One evolution round: mine candidates, admit those that replay correctly, prune by usage, commit a round.

Admission (peers.md §2, ASI/TroVE: verify by re-execution): a candidate is replayed on held-out verified
trajectories, i.e. ones it was not mined from, that contain its chain: the composite runs on the recorded case
with the recorded arguments, and every step's result must match what the atomic calls returned then. It is
admitted when at least ``verify_rate`` of at least ``min_replays`` replays reproduce. ``replay`` is a plain
function, so tests and other executors (a GPU worker pool, a remote tool server) can supply their own.

Pruning uses the trajectories recorded since a composite was admitted: it goes when its runs are verified less
often than ``prune_reliability`` over at least ``prune_min_uses`` uses, and the library keeps the
``max_size`` best by mining score so the policy's tool list stays short.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

from macro.artifacts import ArtifactStore
from macro.case import load_case_ref
from macro.errors import CaseError
from macro.skills.composite import Composite, make_tool
from macro.skills.library import Library, Round
from macro.skills.mine import MineConfig, flat_steps, mine
from macro.tools.executor import ToolExecutor
from macro.tools.registry import Registry

# Result fields that legitimately differ between two runs of the same call: timings, provenance of inputs.
VOLATILE = re.compile(r"seconds|(^|_)ms$|time|source|path|(^|_)id$|stream_position")
Replay = Callable[[Composite, dict], bool]


@dataclass
class EvolveConfig:
    mine: MineConfig = field(default_factory=MineConfig)
    holdout: float = 0.3
    min_replays: int = 2
    max_replays: int = 5
    verify_rate: float = 0.9
    prune_min_uses: int = 5
    prune_reliability: float = 0.6
    max_size: int = 12


def same_result(recorded, replayed, rel: float = 1e-3) -> bool:
    """Recorded and replayed tool results agree, ignoring volatile fields, numbers to a relative tolerance."""
    if isinstance(recorded, dict) and isinstance(replayed, dict):
        keys = {k for k in recorded if not VOLATILE.search(k)}
        return keys <= set(replayed) and all(same_result(recorded[k], replayed[k], rel) for k in keys)
    if isinstance(recorded, (list, tuple)) and isinstance(replayed, (list, tuple)):
        return len(recorded) == len(replayed) and all(same_result(a, b, rel) for a, b in zip(recorded, replayed))
    if isinstance(recorded, bool) or isinstance(replayed, bool):
        return recorded == replayed
    if isinstance(recorded, (int, float)) and isinstance(replayed, (int, float)):
        return abs(recorded - replayed) <= max(rel * abs(recorded), 1e-6)
    return recorded == replayed


def occurrence(comp: Composite, traj: dict) -> list[dict] | None:
    """The recorded atomic steps of the first occurrence of the composite's chain in a trajectory."""
    steps = flat_steps(traj["steps"])
    tools, n = [s["tool"] for s in steps], len(comp.steps)
    for i in range(len(steps) - n + 1):
        if tuple(tools[i : i + n]) == comp.tools:
            return steps[i : i + n]
    return None


def recorded_params(comp: Composite, steps: list[dict]) -> dict:
    """The composite arguments that reproduce a recorded occurrence."""
    params = {}
    for j, step in enumerate(comp.steps):
        for arg, spec in step["args"].items():
            if "param" in spec and arg in steps[j].get("args", {}):
                params[spec["param"]] = steps[j]["args"][arg]
    return params


def executor_replay(registry_factory: Callable[[], Registry], artifacts_root) -> Replay:
    """Replay through the executor the agent uses, on the trajectory's case."""

    def replay(comp: Composite, traj: dict) -> bool:
        steps = occurrence(comp, traj)
        if steps is None or not traj.get("case_ref"):
            return False
        registry = registry_factory()
        tool = make_tool(comp, registry.atomic())
        if comp.name not in registry:
            registry.add(tool)
        try:
            case = load_case_ref(traj["case_ref"])
        except CaseError:  # its scan is gone, or known by hash only (no MACRO_CASE_ROOT): it cannot be replayed
            return False
        _, step, _ = ToolExecutor(registry, ArtifactStore(artifacts_root)).run(
            {"name": comp.name, "args": recorded_params(comp, steps), "id": "replay"}, case, [], {}
        )
        return step.ok and all(same_result(rec.get("data", {}), got["data"]) for rec, got in zip(steps, step.children))

    return replay


def split_holdout(trajectories: list[dict], share: float) -> tuple[list[dict], list[dict]]:
    """Deterministic split by case id, so every run on a case lands on the same side."""
    import zlib

    held = [t for t in trajectories if zlib.crc32(str(t.get("case_id", t["id"])).encode()) % 1000 < share * 1000]
    held_ids = {t["id"] for t in held}
    return [t for t in trajectories if t["id"] not in held_ids], held


def admit(
    candidates: list[Composite],
    held_out: list[dict],
    replay: Replay,
    cfg: EvolveConfig,
    progress: Callable[[str], None] | None = None,
) -> list[Composite]:
    admitted = []
    for comp in candidates:
        pool = [t for t in held_out if t["verification"] == "verified" and occurrence(comp, t) is not None][
            : cfg.max_replays
        ]
        passed = sum(bool(replay(comp, t)) for t in pool)
        comp.verification = {"replayed": len(pool), "reproduced": passed, "trajectories": [t["id"] for t in pool]}
        ok = len(pool) >= cfg.min_replays and passed >= cfg.verify_rate * len(pool)
        if progress:
            progress(f"{comp.name}: {passed}/{len(pool)} replays reproduced -> {'admitted' if ok else 'rejected'}")
        if ok:
            admitted.append(comp)
    return admitted


def usage(name: str, trajectories: Iterable[dict]) -> dict:
    """How a composite fared since it was admitted: uses, failed calls, verified/failed outcomes."""
    uses = errors = verified = failed = 0
    for traj in trajectories:
        calls = [s for s in traj["steps"] if s["tool"] == name]
        if not calls:
            continue
        uses += len(calls)
        errors += sum(not s["ok"] for s in calls)
        verified += traj["verification"] == "verified"
        failed += traj["verification"] == "failed"
    judged = verified + failed
    return {
        "uses": uses,
        "errors": errors,
        "verified": verified,
        "failed": failed,
        "reliability": round(verified / judged, 4) if judged else None,
    }


def prune(current: Round, trajectories: list[dict], cfg: EvolveConfig) -> tuple[list[Composite], list[str]]:
    kept, dropped = [], []
    for comp in current.composites:
        stats = usage(comp.name, (t for t in trajectories if t.get("created", 0) >= comp.provenance.get("admitted", 0)))
        comp.provenance["usage"] = stats
        judged = stats["verified"] + stats["failed"]
        if judged >= cfg.prune_min_uses and stats["reliability"] < cfg.prune_reliability:
            dropped.append(f"{comp.name} (verified in {stats['verified']}/{judged} runs)")
        else:
            kept.append(comp)
    return kept, dropped


def prune_round(trajectories: list[dict], library: Library, cfg: EvolveConfig | None = None) -> dict:
    """A round that only prunes (``macro skills prune``)."""
    kept, dropped = prune(library.current(), trajectories, cfg or EvolveConfig())
    new = library.commit(kept, f"pruned {len(dropped)}") if dropped else library.current()
    return {"round": new.number, "pruned": dropped, "library": [c.name for c in kept]}


def replay_all(library: Library, trajectories: list[dict], replay: Replay, limit: int = 5) -> dict:
    """Re-verify the current library on recorded verified runs (``macro skills verify``); changes nothing."""
    out = {}
    for comp in library.current().composites:
        pool = [t for t in trajectories if t["verification"] == "verified" and occurrence(comp, t) is not None][:limit]
        passed = sum(bool(replay(comp, t)) for t in pool)
        out[comp.name] = {"replayed": len(pool), "reproduced": passed}
    return out


def evolve(
    trajectories: list[dict],
    library: Library,
    replay: Replay,
    cfg: EvolveConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Mine, admit, prune and commit the next library round when the library changes. Returns a report of what
    happened."""
    import time

    cfg = cfg or EvolveConfig()
    current = library.current()
    kept, dropped = prune(current, trajectories, cfg)
    mining_set, held_out = split_holdout(trajectories, cfg.holdout)
    known = {c.digest() for c in kept}
    candidates = [c for c in mine(mining_set, cfg.mine) if c.digest() not in known]
    admitted = admit(candidates, held_out, replay, cfg, progress)
    names = {c.name for c in kept}
    for comp in admitted:
        comp.name = _unique(comp.name, names)
        comp.provenance["admitted"] = time.time()
        comp.provenance["round"] = current.number + 1
        names.add(comp.name)
    library_set = sorted(kept + admitted, key=lambda c: -c.provenance.get("score", 0))[: cfg.max_size]
    note = (
        f"mined {len(candidates)} new candidates from {len(mining_set)} trajectories; "
        f"admitted {len(admitted)}; pruned {len(dropped)}"
    )
    unchanged = [c.to_dict() for c in library_set] == [c.to_dict() for c in current.composites]
    new = current if unchanged else library.commit(library_set, note)  # nothing learnt: no empty round
    return {
        "round": new.number,
        "committed": not unchanged,
        "candidates": [c.name for c in candidates],
        "admitted": [c.name for c in admitted],
        "pruned": dropped,
        "library": [c.name for c in library_set],
        "note": note,
        "verification": {c.name: c.verification for c in candidates},
    }


def _unique(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    k = 2
    while f"{name[:44]}_{k}" in taken:
        k += 1
    return f"{name[:44]}_{k}"
