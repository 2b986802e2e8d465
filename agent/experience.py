"""Experience glue: verdicts on trajectories feed the image memory, and the memory feeds the policy's prompt.

A verdict (a benchmark checker's or a person's ``macro feedback``) is written to the trajectory store; a verified
run's case is embedded and added to the image-feature memory with the atomic tool chain that solved it. At the
start of a turn, the most similar verified cases of the same task family become prompt hints, so a policy sees
what worked before on images like this one (agent_methods.md §1.6).
"""

from __future__ import annotations

import json
import logging

from macro.case import Case, load_case_ref
from macro.config import Home
from macro.errors import CaseError
from macro.skills.mine import flat_steps
from macro.trajectory import Trajectory, TrajectoryStore

log = logging.getLogger(__name__)

HINT_K = 2
HINT_FLOOR = 0.6


def chain_of(traj: Trajectory) -> list[dict]:
    """The successful atomic calls of a run, in order (a composite's steps stand in for it)."""
    return [
        {"name": s["tool"], "args": {k: v for k, v in s["args"].items() if v is not None}}
        for s in flat_steps(traj.steps)
    ]


def family_of(traj: Trajectory, case: Case | None = None) -> str:
    return traj.family or (case.modality if case is not None else traj.case_ref.get("modality", ""))


def record_verdict(
    traj_id: str,
    verdict: str,
    source: str,
    note: str = "",
    home: Home | None = None,
    memory=None,
    remember: bool = True,
    case: Case | None = None,
) -> Trajectory:
    """Store a verdict; a verified run (with at least one successful call) also goes into the image memory unless
    ``remember`` is False (a benchmark's test questions must not leak into later ones). ``case``: the run's scan, for
    a trajectory that stores only a hash of its location (:meth:`Case.ref`).

    Idempotent and ordered so memory never holds a run that is not verified: a verified verdict is written before
    the run's entry, which replaces any earlier entry of the same trajectory (judging twice adds one entry); any
    other verdict removes the run's entries first (``bad`` after ``good`` leaves no hint behind). A kill between the
    two writes leaves at worst a verified run without its entry, which the next verdict repairs."""
    home = home or Home.current()
    store = TrajectoryStore(home.trajectories_db)
    from macro.memory.store import ImageMemory

    memory = memory or ImageMemory(home.memory)
    if verdict != "verified":  # the hint goes before the verdict changes, so no kill leaves one for a failed run
        if memory.file.exists():  # cheap when nothing matches: no write
            memory.remove(where={"trajectory_id": traj_id})
        return store.verify(traj_id, verdict, source, note, embedding_id=None)
    traj = store.verify(traj_id, verdict, source, note)
    if not (remember and chain_of(traj) and traj.case_ref):
        return traj
    from macro.memory.encoder import case_embedding
    from macro.tools.worker import on_voxels

    try:
        case = case if case is not None and case.id == traj.case_id else load_case_ref(traj.case_ref)
    except CaseError as exc:  # the verdict stands; without its scan the run cannot become a hint
        log.info("%s: verified but not remembered: %s", traj.id, exc.problem)
        return traj
    embedding_id = memory.add(
        on_voxels(case_embedding, case),
        {
            "case_id": traj.case_id,
            "modality": case.modality,
            "family": family_of(traj, case),
            "trajectory_id": traj.id,
            "verification": verdict,
            "tools": chain_of(traj),
            "question": traj.question[:200],
            "answer": traj.answer[:200],
        },
        replacing={"trajectory_id": traj.id},
    )
    return store.verify(traj_id, verdict, source, note, embedding_id=embedding_id)


def hints_for(case: Case, family: str, memory, k: int = HINT_K, floor: float = HINT_FLOOR) -> list[str]:
    """Prompt hints from the most similar verified cases of the family (never the case itself)."""
    from macro.memory.encoder import case_embedding
    from macro.tools.worker import on_voxels

    if memory is None or memory.stats().get("entries", 0) == 0:
        return []
    hits = memory.query(
        on_voxels(case_embedding, case), k=k + 1, floor=floor, where={"family": family, "verification": "verified"}
    )
    hints = []
    for hit in hits:
        if hit.meta.get("case_id") == case.id:
            continue
        hints.append(
            f"a similar verified case (similarity {hit.score:.2f}) asked {json.dumps(hit.meta.get('question', ''))} "
            f"and was solved by: {json.dumps(hit.meta['tools'])}"
        )
    return hints[:k]
