"""``macro evolve``: the self-evolution loop, round after round, in the user's home.

A round (the MACRO paper's three mechanisms in order):

1. **experience**: the ``macro`` agent (memory + composites + the current adapter: the GRPO one once a round has
   trained it, else the SFT one) answers every MACRO-Bench train task; the family checker's verdict is recorded, and
   verified runs enter the image memory;
2. **skills**: composites are mined from the verified runs and admitted when their replay reproduces them
   (:func:`macro.skills.evolve.evolve`);
3. **policy**: GRPO continues the adapter on the same tasks with the grown tool set, so admitted composites are
   offered (and rewarded when they are used well).

Each phase writes its result under ``MACRO_HOME/runs/evolve`` before the next starts, so a killed run resumes in
the phase it was in (episodes already answered are kept, GRPO resumes from its checkpoint). ``rounds.jsonl`` has
one line per finished round: registry size, composite usage, success, calls per solved task, the GRPO rewards.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Callable

from macro.config import Home
from macro.eval.bench.agents import AgentSpec
from macro.eval.bench.run import BENCH_EVOLVE, BenchConfig, done_rows, run_episodes
from macro.training.grpo import GRPORecipe, train_grpo, training_tasks


def evolve(
    rounds: int, r: GRPORecipe, home: Home, log: Callable[[str], None] = print, progress: Callable | None = None
) -> list[dict]:
    """Run rounds 1..``rounds`` (those already finished are read back, not run again); returns one row per round."""
    from macro.agent.local_llm import grpo_in_use
    from macro.skills.evolve import evolve as evolve_skills
    from macro.skills.evolve import executor_replay
    from macro.skills.library import Library, load_composites
    from macro.tools.registry import Registry
    from macro.trajectory import TrajectoryStore

    work = home.root / "runs" / "evolve"
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MACRO_CASE_ROOT", str(work))  # trajectories name the task scans relative to the run
    finished = {row["round"]: row for row in _rows(work / "rounds.jsonl")}
    tasks = training_tasks(r, work / "data")
    library = Library(home.skills / "library")
    for n in range(1, rounds + 1):
        if n in finished:
            log(f"round {n}: done before")
            continue
        folder = work / f"round-{n}"
        folder.mkdir(exist_ok=True)
        grpo = grpo_in_use(home)
        adapter = str(grpo) if grpo is not None else None
        spec = AgentSpec("macro", "embedded", memory=True, composites=True, adapter=adapter)
        results = folder / "experience.jsonl"
        rows = run_episodes(
            [(spec, t, True) for t in tasks],
            BenchConfig(llm="embedded"),
            home.root,
            results,
            done_rows(results),
            f"round {n} experience",
            progress,
        )
        log(f"round {n}: {sum(row['success'] for row in rows)}/{len(rows)} train tasks verified")
        skills_file = folder / "skills.json"
        if not skills_file.exists():
            trajectories = [
                t.to_dict() for t in TrajectoryStore(home.trajectories_db).list(verification=("verified", "failed"))
            ]
            report = evolve_skills(
                trajectories, library, executor_replay(Registry.default, home.artifacts), BENCH_EVOLVE
            )
            skills_file.write_text(json.dumps(report, indent=1))
        skills = json.loads(skills_file.read_text())
        log(f"round {n}: library {', '.join(skills['library']) or 'empty'}")
        summary = train_grpo(replace(r, name=f"evolve-round-{n}", start="grpo"), home, command="macro evolve")
        registry = load_composites(Registry.default(), home)
        composites = set(skills["library"])
        solved = [row for row in rows if row["success"]]
        row = {
            "round": n,
            "registry_size": len(registry.all()),
            "composites": sorted(composites),
            "composite_usage": round(sum(any(c in composites for c in row["chain"]) for row in rows) / len(rows), 4),
            "success": round(len(solved) / len(rows), 4),
            "calls_per_solved": round(sum(row["calls"] for row in solved) / len(solved), 3) if solved else None,
            "grpo": {k: summary[k] for k in ("steps", "reward_first", "reward_last", "frac_zero_std", "seconds")},
        }
        with (work / "rounds.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        log(f"round {n}: {json.dumps(row)}")
        finished[n] = row
    return [finished[n] for n in range(1, rounds + 1)]


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a half-written line from a killed run: that round is redone
    return out
