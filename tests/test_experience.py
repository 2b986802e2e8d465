"""Experience end to end: scripted runs on phantoms, verdicts from ground truth, memory, mining, and reuse."""

from __future__ import annotations

import json

import numpy as np
import pytest

REGIONS = {"TC": "tumour core", "WT": "whole tumour"}


def _question(region: str) -> str:
    return f"How large is the {REGIONS[region]}? Use the source model without adaptation."


@pytest.mark.slow
def test_agent_mines_a_verified_composite_and_reuses_it_on_a_new_case(tmp_path, home):
    from typer.testing import CliRunner

    from macro.agent.experience import record_verdict
    from macro.agent.graph import Agent
    from macro.agent.scripted import ScriptedPolicy
    from macro.case import brats_files, load_case
    from macro.cli import app
    from macro.config import Home
    from macro.data import make
    from macro.memory.store import ImageMemory
    from macro.skills.evolve import EvolveConfig, evolve, executor_replay
    from macro.skills.library import Library
    from macro.tools.registry import Registry
    from macro.trajectory import TrajectoryStore

    h = Home(home)
    folders = make("brats-phantom", tmp_path / "cases", n=11, seed=7300, domain="source")
    agent = Agent(ScriptedPolicy(), "scripted", home=h)
    for k, folder in enumerate(folders[:10]):
        region = list(REGIONS)[k % 2]
        result = agent.ask(load_case(brats_files(folder)[0]), _question(region), family="tumour-volume")
        truth = json.loads((folder / "truth.json").read_text())["volumes_ml"][region]
        measured = result.trajectory.steps[-1]["data"]["volume_ml"]
        record_verdict(
            result.trajectory.id,
            "verified" if abs(measured - truth) <= 0.3 * truth else "failed",
            "checker:volume",
            home=h,
        )

    runs = TrajectoryStore(h.trajectories_db).list(verification=("verified", "failed"))
    assert sum((t.verification == "verified" for t in runs)) >= 8
    assert all((t.embedding_id for t in runs if t.verification == "verified"))
    assert ImageMemory(h.memory).stats()["entries"] == sum(t.verification == "verified" for t in runs)

    report = evolve(
        [t.to_dict() for t in runs],
        Library(h.skills / "library"),
        executor_replay(Registry.default, h.artifacts),
        EvolveConfig(holdout=0.4),
    )
    assert len(report["admitted"]) == 1, report
    name = report["admitted"][0]
    assert report["verification"][name]["reproduced"] == report["verification"][name]["replayed"] >= 2

    listed = json.loads(CliRunner().invoke(app, ["tools", "list", "--json"]).stdout)["tools"]
    assert {"name": name, "kind": "composite"}.items() <= next(t for t in listed if t["name"] == name).items()

    new_case = load_case(brats_files(folders[10])[0])
    reused = Agent(ScriptedPolicy(), "scripted", home=h).ask(new_case, _question("WT"), family="tumour-volume")
    atomic = Agent(ScriptedPolicy(), "scripted", home=h, registry=Registry.default(), memory=False).ask(
        new_case, _question("WT")
    )
    (step,) = reused.trajectory.steps
    assert step["tool"] == name
    assert [c["tool"] for c in step["children"]] == ["segment_brain_tumor", "measure_volume"]
    assert [s["tool"] for s in atomic.trajectory.steps] == ["segment_brain_tumor", "measure_volume"]
    assert step["data"]["volume_ml"] == pytest.approx(atomic.trajectory.steps[-1]["data"]["volume_ml"])

    hints = agent.hints(new_case, "tumour-volume")
    assert hints
    assert "segment_brain_tumor" in hints[0]
    assert "similarity" in hints[0]
    assert agent.hints(new_case, "another-family") == []


def test_feedback_marks_the_last_turn_and_remembers_good_runs(demo, home):
    from typer.testing import CliRunner

    from macro.agent.graph import Agent
    from macro.agent.scripted import ScriptedPolicy
    from macro.cli import app
    from macro.config import Home
    from macro.memory.encoder import case_embedding
    from macro.memory.store import ImageMemory
    from macro.trajectory import TrajectoryStore

    agent = Agent(ScriptedPolicy(), "scripted", home=Home(home))
    first = agent.ask(demo, "Describe this scan.")
    agent.ask(None, "Show me an axial slice.", thread_id=first.thread_id)
    runner = CliRunner()
    done = runner.invoke(app, ["feedback", first.thread_id, "good", "--note", "looks right"])
    assert done.exit_code == 0
    assert "verified (memory entry" in done.stdout
    first_turn, last_turn = TrajectoryStore(Home(home).trajectories_db).list(thread_id=first.thread_id)
    assert (first_turn.verification, last_turn.verification) == ("unverified", "verified")
    assert last_turn.verification_source == "person"
    assert last_turn.verification_note == "looks right"
    (hit,) = ImageMemory(Home(home).memory).query(case_embedding(demo), k=1)
    assert hit.meta["trajectory_id"] == last_turn.id
    assert hit.meta["tools"][0]["name"] == "render_slice"
    memory = ImageMemory(Home(home).memory)
    assert runner.invoke(app, ["feedback", first.thread_id, "good"]).exit_code == 0
    assert len(memory) == 1  # judging twice keeps one entry
    assert runner.invoke(app, ["feedback", first.thread_id, "bad"]).exit_code == 0
    assert len(memory) == 0  # bad after good leaves no hint behind
    assert TrajectoryStore(Home(home).trajectories_db).get(last_turn.id).embedding_id is None
    assert runner.invoke(app, ["feedback", first.thread_id, "good"]).exit_code == 0 and len(memory) == 1
    assert runner.invoke(app, ["feedback", first.thread_id, "meh"]).exit_code == 2
    assert runner.invoke(app, ["feedback", "thread-nope", "bad"]).exit_code == 2
    assert runner.invoke(app, ["skills", "show", "nothing_here"]).exit_code == 2
    assert json.loads(runner.invoke(app, ["skills", "list", "--json"]).stdout)["round"] == 0


def test_a_damaged_memory_costs_the_hints_not_the_turn(demo, home, caplog):
    from macro.agent.graph import Agent
    from macro.agent.scripted import ScriptedPolicy
    from macro.config import Home
    from macro.memory.store import ImageMemory

    memory = ImageMemory(Home(home).memory)
    memory.add(np.ones(8), {"family": "x"})
    memory.file.write_bytes(memory.file.read_bytes()[:40])  # truncated by a failing disk
    result = Agent(ScriptedPolicy(), "scripted", home=Home(home)).ask(demo, "Describe this scan.")
    assert [s["tool"] for s in result.trajectory.steps] == ["describe_scan"]
    assert "no memory hints this turn" in caplog.text
