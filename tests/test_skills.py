"""Skill mining, composite definitions and their interpreter, the versioned library, and evolution end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from pydantic import ValidationError

from macro.skills.composite import Composite, DefinitionError, make_tool
from macro.skills.evolve import EvolveConfig, evolve, same_result
from macro.skills.library import Library
from macro.skills.mine import mine
from macro.skills.synthetic import PLANTED, UNRELIABLE, synthetic_trajectories


def _expected_steps(tools, inputs, args):
    steps = []
    for tool, slots, spec in zip(tools, inputs, args):
        want = {}
        for arg, rule in spec.items():
            want[arg] = {"from": {"step": rule[1], "field": rule[2]}} if rule[0] == "from" else ("param", rule[1])
        steps.append((tool, slots, want))
    return steps


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_miner_recovers_the_planted_chains_with_their_bindings_and_nothing_else(seed):
    found = {c.tools: c for c in mine(synthetic_trajectories(600, seed))}
    assert set(found) == {tools for tools, _, _ in PLANTED.values()}
    assert UNRELIABLE not in found
    for tools, inputs, args in PLANTED.values():
        comp = found[tools]
        for step, (tool, slots, want) in zip(comp.steps, _expected_steps(tools, inputs, args)):
            assert step["tool"] == tool
            assert step["inputs"] == slots
            assert set(step["args"]) == set(want), (tool, step["args"])
            for arg, rule in want.items():
                if isinstance(rule, dict):
                    assert step["args"][arg] == rule
                else:
                    param = comp.params[step["args"][arg]["param"]]
                    assert param.get("default") == rule[1]
                    assert param["arg"] == arg
        assert comp.provenance["reliability"] >= 0.8
        assert comp.provenance["support"] >= 5


def test_mining_ignores_unverified_runs_and_needs_support():
    runs = synthetic_trajectories(600, 0)
    for r in runs:
        r["verification"] = "unverified"
    assert mine(runs) == []
    assert mine(synthetic_trajectories(12, 0)) == []


def test_a_log_of_one_task_type_still_yields_its_chain():
    """Every call is frequent here, so lift is capped near 2 and the confidence test has to carry the chain."""
    runs = [
        {
            "id": f"t{k}",
            "verification": "verified",
            "case_id": f"c{k}",
            "steps": [
                {
                    "tool": "segment_brain_tumor",
                    "ok": True,
                    "args": {"adapt": "none"},
                    "inputs": {"case": "c"},
                    "outputs": [f"m{k}"],
                    "data": {},
                },
                {
                    "tool": "measure_volume",
                    "ok": True,
                    "args": {"region": "ET" if k % 2 else "WT"},
                    "inputs": {"case": "c", "mask": f"m{k}"},
                    "outputs": [],
                    "data": {},
                },
            ],
        }
        for k in range(6)
    ]
    (comp,) = mine(runs)
    assert comp.tools == ("segment_brain_tumor", "measure_volume")
    assert comp.steps[1]["inputs"] == {"mask": 0}
    assert comp.params["adapt"]["default"] == "none"
    assert "default" not in comp.params["region"]


def test_chains_are_judged_within_their_task_family():
    """The same calls fail on a harder family; that must not sink the chain where it works, and vice versa."""

    def run(k, family, verdict):
        return {
            "id": f"{family}{k}",
            "verification": verdict,
            "family": family,
            "case_id": f"{family}{k}",
            "steps": [
                {
                    "tool": "segment_brain_tumor",
                    "ok": True,
                    "args": {},
                    "inputs": {},
                    "outputs": [f"m{family}{k}"],
                    "data": {},
                },
                {
                    "tool": "measure_volume",
                    "ok": True,
                    "args": {},
                    "inputs": {"mask": f"m{family}{k}"},
                    "outputs": [],
                    "data": {},
                },
            ],
        }

    runs = [run(k, "easy", "verified") for k in range(6)] + [
        run(k, "hard", "failed" if k % 4 else "verified") for k in range(12)
    ]
    (comp,) = mine(runs)
    assert comp.provenance["family"] == "easy"
    assert comp.provenance["reliability"] == 1.0
    assert mine([r for r in runs if r["family"] == "hard"]) == []


def test_definition_checks_and_round_trip():
    comp = Composite(
        "seg_then_measure",
        [
            {"tool": "segment_brain_tumor", "args": {"adapt": {"param": "adapt"}}, "inputs": {}},
            {"tool": "measure_volume", "args": {"region": {"param": "region"}}, "inputs": {"mask": 0}},
        ],
        {
            "adapt": {"tool": "segment_brain_tumor", "arg": "adapt", "default": "none"},
            "region": {"tool": "measure_volume", "arg": "region"},
        },
    )
    again = Composite.from_dict(json.loads(json.dumps(comp.to_dict())))
    assert again == comp
    assert again.digest() == comp.digest()
    bad = comp.to_dict()
    bad["steps"][1]["inputs"] = {"mask": 1}
    with pytest.raises(DefinitionError, match="earlier step"):
        Composite.from_dict(bad)
    bad = comp.to_dict()
    bad["params"]["unused"] = {"tool": "measure_volume", "arg": "region"}
    with pytest.raises(DefinitionError, match="used by no step"):
        Composite.from_dict(bad)


def _seg_measure(default_adapt="none") -> Composite:
    return Composite(
        "seg_then_measure",
        [
            {"tool": "segment_brain_tumor", "args": {"adapt": {"param": "adapt"}}, "inputs": {}},
            {"tool": "measure_volume", "args": {"region": {"param": "region"}}, "inputs": {"mask": 0}},
        ],
        {
            "adapt": {"tool": "segment_brain_tumor", "arg": "adapt", "default": default_adapt},
            "region": {"tool": "measure_volume", "arg": "region"},
        },
    )


def test_composite_tool_derives_its_schema_and_modalities_from_its_steps(demo, home):
    from macro.tools.registry import Registry, kind

    registry = Registry.default()
    tool = make_tool(_seg_measure(), {t.name: t for t in registry.all()})
    fields = tool.args_schema.model_fields
    assert fields["adapt"].default == "none"
    assert fields["region"].default == "WT"
    assert tool.spec.modalities == ("mri-multiseq",)
    assert kind(tool) == "composite"
    with pytest.raises(ValidationError):
        tool.args_schema(region="XX")
    registry.add(tool)
    with pytest.raises(DefinitionError, match="atomic"):
        make_tool(
            Composite(
                "nested_one",
                [
                    {"tool": "seg_then_measure", "args": {}, "inputs": {}},
                    {"tool": "describe_scan", "args": {}, "inputs": {}},
                ],
            ),
            {t.name: t for t in registry.all()},
        )


def test_executor_runs_a_composite_step_by_step_and_matches_the_atomic_chain(demo, home):
    from macro.artifacts import ArtifactStore
    from macro.tools.executor import ToolExecutor
    from macro.tools.registry import Registry

    registry = Registry.default()
    registry.add(make_tool(_seg_measure(), {t.name: t for t in registry.all()}))
    executor = ToolExecutor(registry, ArtifactStore(home / "artifacts"))
    _, seg, produced = executor.run({"name": "segment_brain_tumor", "args": {"adapt": "none"}, "id": "a"}, demo, [], {})
    _, measure, _ = executor.run({"name": "measure_volume", "args": {"region": "ET"}, "id": "b"}, demo, produced, {})
    msg, step, refs = executor.run({"name": "seg_then_measure", "args": {"region": "ET"}, "id": "c"}, demo, [], {})
    assert step.ok
    assert [c["tool"] for c in step.children] == ["segment_brain_tumor", "measure_volume"]
    first, second = step.children
    assert second["inputs"]["mask"] == first["outputs"][0]
    assert len(refs) == len(first["outputs"])
    assert step.data["volume_ml"] == pytest.approx(measure.data["volume_ml"])
    assert same_result(measure.data, step.data)
    assert same_result(seg.data, first["data"])
    _, bad, _ = executor.run({"name": "seg_then_measure", "args": {"region": "XX"}, "id": "d"}, demo, [], {})
    assert not bad.ok
    assert "region" in bad.error


def test_a_failing_step_stops_the_composite_and_names_it(demo, home):
    from macro.artifacts import ArtifactStore
    from macro.tools.executor import ToolExecutor
    from macro.tools.registry import Registry

    comp = Composite(
        "render_then_measure",
        [
            {"tool": "render_slice", "args": {"index": {"param": "index"}}, "inputs": {}},
            {"tool": "measure_volume", "args": {}, "inputs": {}},
        ],
        {"index": {"tool": "render_slice", "arg": "index"}},
    )
    registry = Registry.default()
    registry.add(make_tool(comp, {t.name: t for t in registry.all()}))
    msg, step, _ = ToolExecutor(registry, ArtifactStore(home / "artifacts")).run(
        {"name": "render_then_measure", "args": {"index": 100000}, "id": "x"}, demo, [], {}
    )
    assert not step.ok
    assert msg.status == "error"
    assert "step 1/2 (render_slice)" in step.error
    assert len(step.children) == 1


def test_library_rounds_are_checksummed_and_a_damaged_round_falls_back(tmp_path):
    lib = Library(tmp_path / "lib")
    assert lib.current().number == 0
    first = lib.commit([_seg_measure()], "first")
    second = lib.commit([_seg_measure("tent")], "second")
    assert lib.current().number == second.number == 2
    assert lib.current().composites[0].params["adapt"]["default"] == "tent"
    second.path.write_text(second.path.read_text().replace("tent", "vista"))
    again = Library(tmp_path / "lib")
    current = again.current()
    assert current.number == first.number
    assert "checksum mismatch" in again.problems[0]
    assert str(second.path) in again.problems[0]


_WRITER = """
import sys
from macro.skills.library import Library
from tests.test_skills import _seg_measure
lib = Library(sys.argv[1])
comps = []
for k in range(4000):
    c = _seg_measure()
    c.name = f"seg_then_measure_{k}"
    c.description = "x" * 150
    comps.append(c)
print("ready", flush=True)
while True:
    lib.commit(comps, "big")
"""


def test_killing_a_writer_mid_commit_leaves_a_loadable_library(tmp_path):
    root = tmp_path / "lib"
    Library(root).commit([_seg_measure()], "before")
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    for delay in (0.05, 0.4, 0.9):
        proc = subprocess.Popen([sys.executable, str(script), str(root)], stdout=subprocess.PIPE, env=env)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        lib = Library(root)
        current = lib.current()
        assert lib.problems == []
        assert current.composites
        assert current.note in ("before", "big")


def test_evolve_admits_only_replayable_candidates_and_prunes_unreliable_composites(tmp_path):
    runs = synthetic_trajectories(600, 3)
    lib = Library(tmp_path / "lib")
    report = evolve(
        runs, lib, replay=lambda comp, traj: comp.tools != PLANTED["screen_then_explain"][0], cfg=EvolveConfig()
    )
    admitted = {lib.current().get(n).tools for n in report["admitted"]}
    assert admitted == {PLANTED["segment_then_measure"][0], PLANTED["describe_then_render_then_score"][0]}
    assert report["verification"]["score_then_answer"]["reproduced"] == 0
    name = report["admitted"][0]
    later = [
        {
            "id": f"use-{k}",
            "created": time.time() + 1,
            "verification": "failed" if k % 4 else "verified",
            "case_id": f"u{k}",
            "steps": [{"tool": name, "ok": True, "args": {}, "children": []}],
        }
        for k in range(8)
    ]
    again = evolve(later, lib, replay=lambda comp, traj: True)
    assert any((p.startswith(name) for p in again["pruned"]))
    assert name not in again["library"] and again["committed"]
    rounds = len(lib.rounds())
    idle = evolve(later, lib, replay=lambda comp, traj: True)  # nothing new to mine or prune
    assert not idle["committed"] and idle["round"] == again["round"] and len(lib.rounds()) == rounds


def _mangled(kind: str) -> list:
    good = _seg_measure().to_dict()
    if kind == "param names an unknown tool":
        good["params"]["adapt"]["tool"] = "no_such_tool"
    elif kind == "args as a list":
        good["steps"][0]["args"] = [1, 2]
    elif kind == "integer name":
        good["name"] = 5
    elif kind == "steps not a list":
        good["steps"] = 3
    elif kind == "composite not an object":
        good = 7
    return [good]


@pytest.mark.parametrize(
    "kind",
    ["param names an unknown tool", "args as a list", "integer name", "steps not a list", "composite not an object"],
)
def test_a_malformed_round_with_a_valid_checksum_is_skipped_and_reported(home, demo_folder, kind):
    from typer.testing import CliRunner

    from macro.cli import app
    from macro.config import Home
    from macro.skills.library import checksum, load_composites
    from macro.tools.registry import Registry

    lib = Library(Home.current().skills / "library")
    lib.commit([_seg_measure()], "good")
    raw = _mangled(kind)
    bad = lib.root / "round-0002.json"
    bad.write_text(json.dumps({"round": 2, "composites": raw, "sha256": checksum(raw)}))
    (lib.root / "CURRENT").write_text(bad.name)
    registry = load_composites(Registry.default())
    assert any("round-0002" in p or "library round 2" in p for p in registry.problems), registry.problems
    result = CliRunner().invoke(app, ["ask", str(demo_folder), "What is the tumour volume?", "--policy", "scripted"])
    assert result.exit_code == 0, result.output
    doctor = CliRunner().invoke(app, ["doctor", "--json"])
    assert doctor.exit_code == 0 and "round" in doctor.stdout


def test_the_library_pointer_stays_inside_and_stray_files_are_not_rounds(tmp_path):
    lib = Library(tmp_path / "lib")
    first = lib.commit([_seg_measure()], "first")
    (lib.root / "round-abc.json").write_text("{}")
    outside = tmp_path / "round-9999.json"
    outside.write_text(first.path.read_text())
    (lib.root / "CURRENT").write_text(str(outside))
    again = Library(lib.root)
    assert again.current().number == 1 and "not a round file of this library" in again.problems[0]
    assert again.commit([_seg_measure("tent")], "after").number == 2


def test_composites_are_bounded_and_their_steps_count_against_the_turn():
    from macro.agent.loop import MAX_STEPS, calls_made
    from macro.skills.composite import MAX_COMPOSITE_STEPS

    steps = [{"tool": "describe_scan", "inputs": {}, "args": {}}] * (MAX_COMPOSITE_STEPS + 1)
    with pytest.raises(DefinitionError, match="steps"):
        Composite("too_long_chain", steps, {}).check()
    assert MAX_COMPOSITE_STEPS <= MAX_STEPS
    assert calls_made([{"tool": "c", "children": [{}, {}, {}]}, {"tool": "a", "children": []}, {"tool": "b"}]) == 5
