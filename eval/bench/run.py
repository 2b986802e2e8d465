"""The MACRO-Bench runner: build tasks, gather experience on the train split, then run every agent on held-out
and OOD tasks, one question per fresh thread, and write results as they come (resumable).

Everything lives in the benchmark's own home (``OUT/home``): its trajectory store, image memory and skill library
start empty, so a run never reads or pollutes the user's experience, and two runs with the same seeds see the
same tasks. Experience comes from the zero-shot agent's own train-split runs, judged by the task checkers; test
runs are judged and stored too, but never enter the memory, so no question can help a later one.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

from macro.eval.bench.agents import AgentSpec, build_agent, specs, static_plan
from macro.eval.bench.tasks import FAMILIES, Task
from macro.skills.evolve import EvolveConfig
from macro.skills.mine import MineConfig, atomic_steps

# quick: the keyword policy stands in for the LLM (deterministic, minutes on 2 cores; a smoke test, too small for
# any claim); full: the embedded LLM, sized for the 10-point claim: 7 families x 3 seeds x 8 = 168 paired tasks per
# split, above the 155 that detect 10 points at 20 % discordance (report.py states it for each run).
SUITES = {
    "quick": {"seeds": (0, 1, 2), "n_train": 4, "n_eval": 1, "llm": "scripted"},
    "full": {"seeds": (0, 1, 2), "n_train": 4, "n_eval": 8, "llm": "embedded"},
}
EXPERIENCE_AGENT = "react"
# A benchmark's train split is small (about ten runs per family): a chain needs 3 verified runs (not 5), and 40 %
# of the cases (not 30 %) are held out so a candidate has at least two replays.
BENCH_EVOLVE = EvolveConfig(mine=MineConfig(min_support=3), holdout=0.4)


@dataclass
class BenchConfig:
    suite: str = "quick"
    seeds: tuple[int, ...] = (0, 1, 2)
    n_train: int = 6
    n_eval: int = 1
    families: tuple[str, ...] = tuple(FAMILIES)
    llm: str = "embedded"
    workers: int = 1

    @classmethod
    def for_suite(cls, suite: str, **overrides) -> "BenchConfig":
        if suite not in SUITES:
            raise ValueError(f"unknown suite {suite!r}; choose {', '.join(SUITES)}")
        return cls(suite=suite, **{**SUITES[suite], **{k: v for k, v in overrides.items() if v is not None}})


def build_tasks(
    cfg: BenchConfig, data: Path, available: set[str], log: Callable[[str], None]
) -> tuple[list[Task], dict[str, str]]:
    tasks, skipped = [], {}
    for name in cfg.families:
        family = FAMILIES[name]
        missing = [t for t in family.needs if t not in available]
        if missing:
            skipped[name] = f"needs {', '.join(missing)}, not registered"
            continue
        for seed in cfg.seeds:
            tasks += family.build(data, "train", seed, cfg.n_train)
            for split in ("held_out", "ood"):
                tasks += family.build(data, split, seed, cfg.n_eval)
        log(f"tasks: {name} ready")
    return tasks, skipped


def episode(spec: AgentSpec, task: Task, home_root: str, remember: bool, threads: int) -> dict:
    """One question in a fresh thread; never raises (a crash is a failed episode with its error)."""
    import torch

    from macro.agent.experience import record_verdict
    from macro.case import load_case
    from macro.config import Home
    from macro.tools.worker import check_voxels, on_voxels

    torch.set_num_threads(threads)
    home = Home(Path(home_root))
    row = {
        "agent": spec.name,
        "task": task.id,
        "family": task.family,
        "split": task.split,
        "seed": int(task.id.split("/")[2]),
    }
    start = time.perf_counter()
    try:
        agent = build_agent(spec, home, plan=static_plan(task.expected, task.question) if spec.static else None)
        case = load_case(task.case if len(task.case) > 1 else task.case[0], modality=task.modality, check=False)
        on_voxels(check_voxels, case)
        result = agent.ask(case, task.question, family=task.family)
        success = FAMILIES[task.family].check(task, result.answer)
        record_verdict(
            result.trajectory.id,
            "verified" if success else "failed",
            f"bench:{task.family}",
            home=home,
            remember=remember,
        )
        row.update(
            success=bool(success),
            answer=result.answer[:400],
            trajectory=result.trajectory.id,
            **process_metrics(task.expected, result.trajectory.steps),
        )
    except Exception as exc:  # one broken episode must not end the benchmark
        row.update(
            success=False,
            error=f"{type(exc).__name__}: {exc}",
            trace=traceback.format_exc(limit=3),
            calls=0,
            failed_calls=0,
            tool_selection=0.0,
            arg_validity=None,
            arg_accuracy=None,
            fidelity=0.0,
            chain=[],
        )
    row["latency_s"] = round(time.perf_counter() - start, 3)
    return row


def process_metrics(expected: list[dict], steps: list[dict]) -> dict:
    """MedCTA-style process metrics of one run against the family's expected chain."""
    calls = atomic_steps(steps)
    ok_names = [s["tool"] for s in calls if s["ok"]]
    want = [e["name"] for e in expected]
    valid = [not (s.get("error") or "").startswith(("invalid arguments", "unknown tool", "tool ")) for s in calls]
    matched = []
    for e in expected:
        call = next((s for s in calls if s["tool"] == e["name"] and s["ok"]), None)
        if call is not None:
            matched.append(
                all(call["args"].get(k) in (v if isinstance(v, (list, tuple)) else (v,)) for k, v in e["args"].items())
            )
    return {
        "calls": len(steps),
        "atomic_calls": len(calls),
        "failed_calls": sum(not s["ok"] for s in steps),
        "tool_selection": round(len(set(want) & set(ok_names)) / len(want), 4),
        "arg_validity": round(sum(valid) / len(valid), 4) if valid else None,
        "arg_accuracy": round(sum(matched) / len(matched), 4) if matched else None,
        "fidelity": round(_lcs_ratio(want, ok_names), 4),
        "chain": [s["tool"] for s in steps],
    }


def _lcs_ratio(a: list[str], b: list[str]) -> float:
    if not a and not b:
        return 1.0
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return 2 * table[-1][-1] / (len(a) + len(b))


def done_rows(results: Path) -> dict[tuple[str, str], dict]:
    rows = {}
    if results.exists():
        for line in results.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a half-written last line from an interrupted run is redone
            rows[(row["agent"], row["task"])] = row
    return rows


def run_episodes(
    jobs: list[tuple[AgentSpec, Task, bool]],
    cfg: BenchConfig,
    home: Path,
    results: Path,
    done: dict,
    label: str,
    progress: Callable | None,
) -> list[dict]:
    """Each (agent, task, remember) job's row, running the ones not ``done`` (appended to ``results`` as they
    finish, so a killed run resumes)."""
    todo = [(spec, task, remember) for spec, task, remember in jobs if (spec.name, task.id) not in done]
    rows = [done[(spec.name, task.id)] for spec, task, _ in jobs if (spec.name, task.id) in done]
    bar = progress(total=len(jobs), initial=len(rows), desc=label) if progress else None
    threads = max(1, (os.cpu_count() or 1) // cfg.workers)

    def keep(row: dict) -> None:
        rows.append(row)
        with results.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if bar:
            bar.update(1)
            bar.set_postfix_str(f"{row['agent']} {'ok' if row['success'] else 'x'}")

    if cfg.workers <= 1:
        for spec, task, remember in todo:
            keep(episode(spec, task, str(home), remember, threads))
    else:
        # Episodes of one agent go to the same pool in order, so each worker loads a given LLM once.
        with ProcessPoolExecutor(cfg.workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(episode, spec, task, str(home), remember, threads) for spec, task, remember in todo]
            for future in as_completed(futures):
                keep(future.result())
    if bar:
        bar.close()
    return rows


def run_bench(
    cfg: BenchConfig,
    out: Path,
    agent_names: list[str],
    grpo_adapter: str | None = None,
    log: Callable[[str], None] = print,
    progress: Callable | None = None,
) -> dict:
    from macro.config import Home
    from macro.skills.evolve import evolve, executor_replay
    from macro.skills.library import Library
    from macro.tools.registry import Registry
    from macro.trajectory import TrajectoryStore

    out.mkdir(parents=True, exist_ok=True)
    home = Home(out / "home").ensure()
    agents, skipped_agents = specs(agent_names, cfg.llm, grpo_adapter)
    available = {t.name for t in Registry.default().all()}
    tasks, skipped_families = build_tasks(cfg, out / "data", available, log)
    (out / "tasks.json").write_text(json.dumps([t.to_dict() for t in tasks], indent=1))
    results = out / "results.jsonl"
    done = done_rows(results)

    started = time.perf_counter()
    experience = AgentSpec(EXPERIENCE_AGENT, cfg.llm)
    train_rows = run_episodes(
        [(experience, t, True) for t in tasks if t.split == "train"],
        cfg,
        home.root,
        results,
        done,
        "experience",
        progress,
    )
    library = Library(home.skills / "library")
    if library.current().number == 0:
        trajectories = [
            t.to_dict() for t in TrajectoryStore(home.trajectories_db).list(verification=("verified", "failed"))
        ]
        evolution = evolve(
            trajectories,
            library,
            executor_replay(Registry.default, home.artifacts),
            BENCH_EVOLVE,
        )
        (out / "evolution.json").write_text(json.dumps(evolution, indent=1))
    evolution = json.loads((out / "evolution.json").read_text())
    log(
        f"experience: {sum(r['success'] for r in train_rows)}/{len(train_rows)} train runs verified; library: "
        f"{', '.join(evolution['library']) or 'empty'}"
    )

    jobs = [(spec, t, False) for spec in agents for t in tasks if t.split != "train"]
    test_rows = run_episodes(jobs, cfg, home.root, results, done, "test", progress)
    from macro.eval.bench.report import summarise

    return summarise(
        test_rows,
        train_rows,
        cfg=asdict(cfg),
        evolution=evolution,
        skipped={"agents": skipped_agents, "families": skipped_families},
        seconds=time.perf_counter() - started,
    )
