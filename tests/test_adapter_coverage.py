"""The adapter knows what it was trained on: tools it never saw (a new plug-in, a changed spec) are named, with the
command that retrains, by the agent's start-up, ``macro tools list`` and ``macro doctor``."""

from __future__ import annotations

import json
import shutil

from pydantic import BaseModel
from typer.testing import CliRunner

from macro.agent.local_llm import ADAPTER, coverage_warning, untrained_tools
from macro.cli import app
from macro.tools.base import MacroTool, ToolResult, ToolSpec
from macro.tools.registry import Registry


class Ruler(MacroTool):
    name: str = "measure_ruler"
    description: str = "Measure a distance between two points (an example plug-in)."
    args_schema: type[BaseModel] = BaseModel
    spec = ToolSpec(modalities=("*",), version="0.1.0")

    def execute(self, ctx, args):
        return ToolResult(text="0 mm")


def _adapter_copy(tmp_path, edit):
    folder = tmp_path / "adapter"
    shutil.copytree(ADAPTER.shipped, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest["data"])
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_a_new_plug_in_is_named_with_the_retraining_command():
    registry = Registry.default()
    registry.add(Ruler())
    assert "measure_ruler" in untrained_tools(registry)
    line = coverage_warning(untrained_tools(registry))
    assert line.startswith("warning: ") and "measure_ruler" in line and line.endswith("macro train sft")
    assert "\n" not in line


def test_a_changed_spec_version_counts_as_untrained(tmp_path):
    registry = Registry.default()
    versions = {name: tool.spec.version for name, tool in registry.atomic().items()}

    def record(data):
        data["tool_versions"] = {**versions, "describe_scan": "0.0.1"}

    assert untrained_tools(registry, _adapter_copy(tmp_path, record)) == ["describe_scan"]

    def record_all(data):
        data["tool_versions"] = versions

    folder = _adapter_copy(tmp_path / "all", record_all)
    assert untrained_tools(registry, folder) == []
    assert coverage_warning(untrained_tools(registry, folder)) is None


def test_tools_list_and_doctor_warn(home):
    """A home adapter trained before score_anomaly existed (its manifest does not list it) is warned about."""
    from macro.config import Home

    def forget(data):
        data["tool_versions"].pop("score_anomaly")
        data["tools"].remove("score_anomaly")

    own = ADAPTER.home_dir(Home.current())
    own.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(_adapter_copy(home, forget), own)
    runner = CliRunner()
    listed = runner.invoke(app, ["tools", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert "was not trained on score_anomaly" in listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)["tools"]}
    assert rows["score_anomaly"]["embedded_policy_trained"] is False
    assert rows["measure_volume"]["embedded_policy_trained"] is True
    doctor = runner.invoke(app, ["doctor", "--json"])
    assert "score_anomaly" in json.loads(doctor.stdout)["policies"]["embedded adapter"]


def test_the_shipped_adapter_knows_every_registered_tool():
    assert untrained_tools(Registry.default(), ADAPTER.shipped) == []
