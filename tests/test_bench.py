"""MACRO-Bench: checkers, process metrics, agent specs, and a resumable slice of the quick suite."""

from __future__ import annotations

import json

import pytest

from macro.eval.bench.agents import specs, static_plan
from macro.eval.bench.run import process_metrics
from macro.eval.bench.tasks import (
    Task,
    check_anomaly,
    check_diagnosis,
    check_finding,
    check_lesion,
    check_volume,
    reported_volume,
)


def _task(family: str, truth: dict) -> Task:
    return Task("f/held_out/0/0", family, "held_out", ["x"], "q", truth, [])


def test_volume_checker_reads_the_asked_region_not_the_first_number():
    answer = "Segmented (adapt=vista, 10 steps, 6.1 s): ET 12.00 mL, TC 20.00 mL, WT 50.00 mL; mean uncertainty 0.1."
    assert reported_volume(answer, "WT") == 50.0
    assert reported_volume(answer, "TC") == 20.0
    assert reported_volume("whole tumour (WT) volume: 41.50 mL (900 voxels)", "WT") == 41.5
    assert reported_volume("The whole tumour measures 39 mL.", "WT") == 39.0
    assert check_volume(_task("tumour-volume", {"region": "WT", "volume_ml": 45.0}), answer)
    assert not check_volume(_task("tumour-volume", {"region": "TC", "volume_ml": 45.0}), answer)
    assert not check_volume(_task("tumour-volume", {"region": "WT", "volume_ml": 45.0}), "I could not measure it.")


def test_class_and_finding_checkers():
    assert check_lesion(
        _task("lesion-class", {"label": "NV"}), "Lesion class probabilities (calibrated): NV 0.61, MEL 0.20"
    )
    assert not check_lesion(_task("lesion-class", {"label": "MEL"}), "Most likely NV; MEL is less likely.")
    summary = "Findings (calibrated probability): Effusion 0.81, Mass 0.10; above 0.5: Effusion (model abc)."
    assert check_finding(_task("cxr-finding", {"finding": "Effusion", "present": True}), summary)
    assert check_finding(_task("cxr-finding", {"finding": "Mass", "present": False}), summary)
    assert check_finding(_task("cxr-finding", {"finding": "Mass", "present": True}), "Yes, there is a mass.")
    assert not check_finding(_task("cxr-finding", {"finding": "Mass", "present": True}), "I am not sure.")


def test_anomaly_and_diagnosis_checkers():
    tool = "Anomaly score 3.10 vs threshold 2.50 (99th percentile of held-out normals): anomalous; strongest at row 4."
    assert check_anomaly(_task("anomaly-screen", {"anomalous": True}), tool)
    assert check_anomaly(
        _task("anomaly-screen", {"anomalous": False}), tool.replace("anomalous;", "within normal limits;")
    )
    assert check_anomaly(_task("anomaly-screen", {"anomalous": False}), "No, it looks normal.")
    assert not check_anomaly(_task("anomaly-screen", {"anomalous": True}), "Here is a description of the scan.")
    options = ["Normal", "Pneumonia", "Lung cancer"]
    chain = (
        "Step 6 secondary signs: none (0.70). Step 7 diagnosis: Pneumonia (0.55). "
        "Diagnosis: Pneumonia. (student model x)"
    )
    assert check_diagnosis(_task("stepwise-dx", {"diagnosis": "Pneumonia", "options": options}), chain)
    assert not check_diagnosis(_task("stepwise-dx", {"diagnosis": "Lung cancer", "options": options}), chain)
    assert check_diagnosis(
        _task("stepwise-dx", {"diagnosis": "Lung cancer", "options": options}), "Most consistent with lung cancer."
    )


def test_process_metrics_flatten_composites_and_score_the_chain():
    expected = [
        {"name": "segment_brain_tumor", "args": {"adapt": ("vista", "tent")}},
        {"name": "measure_volume", "args": {"region": "WT"}},
    ]
    seg = {"tool": "segment_brain_tumor", "ok": True, "args": {"adapt": "none"}}
    measure = {"tool": "measure_volume", "ok": True, "args": {"region": "WT"}}
    bad = {
        "tool": "measure_volume",
        "ok": False,
        "args": {"region": "XX"},
        "error": "invalid arguments for measure_volume: region",
    }
    m = process_metrics(expected, [bad, {"tool": "skill", "ok": True, "args": {}, "children": [seg, measure]}])
    assert m["calls"] == 2
    assert m["atomic_calls"] == 3
    assert m["failed_calls"] == 1
    assert m["tool_selection"] == 1.0
    assert m["fidelity"] == 1.0
    assert m["arg_validity"] == pytest.approx(2 / 3, abs=0.0001)
    assert m["arg_accuracy"] == 0.5
    assert m["chain"] == ["measure_volume", "skill"]
    assert process_metrics(expected, [])["tool_selection"] == 0.0


def test_agent_specs_and_static_plans():
    agents, skipped = specs(["static", "react", "react+memory+composites", "macro"], "scripted")
    assert [a.name for a in agents] == ["static", "react", "react+memory+composites"]
    assert "GRPO" in skipped["macro"]
    assert agents[2].memory
    assert agents[2].composites
    assert not agents[1].memory
    with pytest.raises(ValueError, match="unknown agent"):
        specs(["react+magic"], "scripted")
    plan = static_plan(
        [{"name": "segment_brain_tumor", "args": {}}, {"name": "measure_volume", "args": {}}],
        "How large is the tumour core?",
    )
    assert plan == [{"name": "segment_brain_tumor", "args": {}}, {"name": "measure_volume", "args": {"region": "TC"}}]


@pytest.mark.slow
def test_bench_slice_writes_the_report_and_resumes_without_rerunning(tmp_path, home):
    from typer.testing import CliRunner

    from macro.cli import app

    out = tmp_path / "bench"
    args = [
        "bench",
        "--llm",
        "scripted",
        "--families",
        "lesion-class,cxr-finding",
        "--seeds",
        "0,1,2",
        "--n-train",
        "2",
        "--n-eval",
        "1",
        "--agents",
        "static,react,react+memory+composites,macro",
        "--out",
        str(out),
        "--json",
    ]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    for agent in ("static", "react", "react+memory+composites"):
        for split in ("held_out", "ood"):
            cell = report["agents"][agent][split]
            assert {"success", "ci", "tool_selection", "calls_per_solved", "failed_calls"} <= set(cell)
            assert cell["ci"][0] <= cell["success"] <= cell["ci"][1]
            assert cell["episodes"] == 6
            assert cell["errors"] == 0
    assert report["agents"]["static"]["held_out"]["tool_selection"] == 100.0
    assert "macro" in report["skipped"]["agents"]
    assert "claim" in report["analysis"]
    static = report["analysis"]["components"]["held_out"]["static"]
    assert static["tasks"] == 6 and static["ci"][0] <= static["delta"] <= static["ci"][1]
    assert 0 <= static["p_mcnemar"] <= 1 and static["min_detectable"] is None  # 6 pairs detect nothing
    size = report["analysis"]["size"]
    assert size["tasks_per_split"] == 6 and size["n_eval_for_claim"] * 6 >= size["needed_for_claim"] > 6
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 12 + 3 * 12
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0
    assert len((out / "results.jsonl").read_text().splitlines()) == len(lines)
    assert json.loads(again.stdout)["agents"] == report["agents"]
    assert (out / "bench.md").read_text().startswith("# MACRO-Bench report")
    assert (out / "bench.png").stat().st_size > 0
    assert CliRunner().invoke(app, ["bench", "--families", "nope", "--out", str(out)]).exit_code == 2
