"""External MCP servers as MACRO tools: ``macro tools add-mcp`` remembers a real FastMCP server written here, the
agent (scripted plan) calls its tools on a real scan through the executor and worker, results reach the
trajectory; a server that stops answering is reported at start and never stops the agent."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel
import numpy as np
import pytest
from mcp import types
from typer.testing import CliRunner

from macro.artifacts import ArtifactStore
from macro.case import load_case
from macro.cli import app
from macro.config import Home
from macro.errors import MacroError
from macro.tools.base import ToolContext
from macro.tools.mcp_client import arguments_model, macro_name, make_tool, short_description, to_result
from macro.tools.mcp_servers import McpServer, RemoteTool
from macro.tools.registry import Registry

ANATOMICAL = Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"
SERVER = '''
import io
import sys

import nibabel
import numpy as np
from mcp.server.fastmcp import FastMCP, Image
from PIL import Image as Picture

app = FastMCP("Scan Stats", port=int(sys.argv[2]) if len(sys.argv) > 2 else 8000, log_level="WARNING")


def voxels(path):
    return np.asarray(nibabel.load(path).dataobj, dtype=np.float64)


@app.tool()
def mean_intensity(case: str) -> str:
    """Mean voxel intensity of a NIfTI scan."""
    return f"The mean intensity is {voxels(case).mean():.3f}. It counts every voxel."


@app.tool()
def intensityStats(path: str, percentile: int = 50) -> dict[str, float]:
    """Percentile of the voxel intensities."""
    return {"percentile": percentile, "value": float(np.percentile(voxels(path), percentile))}


@app.tool()
def middle_slice(case: str) -> Image:
    """The middle axial slice as a PNG."""
    plane = voxels(case)[:, :, voxels(case).shape[2] // 2]
    buffer = io.BytesIO()
    Picture.fromarray((255 * plane / plane.max()).astype(np.uint8)).save(buffer, format="PNG")
    return Image(data=buffer.getvalue(), format="png")


@app.tool()
def describe_scan(case: str) -> str:
    """A name MACRO already uses."""
    return "not MACRO's describe_scan"


@app.tool()
def broken(case: str) -> str:
    """Always fails."""
    raise ValueError("this scan is too small for me")


if __name__ == "__main__":
    app.run("streamable-http" if sys.argv[1:2] == ["http"] else "stdio")
'''


@pytest.fixture
def server_script(tmp_path) -> Path:
    path = tmp_path / "servers" / "stats_server.py"
    path.parent.mkdir()
    path.write_text(textwrap.dedent(SERVER))
    return path


def _add(target: str, *options: str):
    result = CliRunner().invoke(app, ["tools", "add-mcp", target, *options])
    assert result.exit_code == 0, result.output
    return result


def _plan(tmp_path: Path, calls: list[dict]) -> str:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(calls))
    return f"scripted:{path}"


def test_agent_calls_an_added_mcp_server_and_starts_when_it_is_gone(server_script, home, tmp_path):
    from macro.agent.graph import Agent
    from macro.agent.policy import make_policy

    added = _add(f"{sys.executable} {server_script}", "--modality", "mr", "--dims", "3")
    assert "added MCP server 'scan_stats'" in added.stdout
    assert "stats_describe_scan" in added.stdout and "intensity_stats" in added.stdout  # renamed: a clash, camelCase
    assert "no example requests" in added.stderr
    listed = CliRunner().invoke(app, ["tools", "list", "--json"])
    rows = {row["name"]: row for row in json.loads(listed.stdout)["tools"]}
    assert rows["mean_intensity"]["mcp_server"] == "scan_stats" and rows["mean_intensity"]["kind"] == "atomic"
    assert rows["describe_scan"]["mcp_server"] is None and rows["mean_intensity"]["embedded_policy_trained"] is False
    assert "case" not in rows["mean_intensity"]["arguments"] and "path" not in rows["intensity_stats"]["arguments"]
    table = CliRunner().invoke(app, ["tools", "list"]).stdout
    assert any(line.split()[:2] == ["mean_intensity", "mcp"] for line in table.splitlines())

    calls = [
        {"name": "mean_intensity", "args": {}},
        {"name": "intensity_stats", "args": {"percentile": 90}},
        {"name": "middle_slice", "args": {}},
        {"name": "broken", "args": {}},
    ]
    policy, policy_id = make_policy(_plan(tmp_path, calls))
    agent = Agent(policy, policy_id, home=Home(home), memory=False)
    assert not agent.registry.problems
    voxels = np.asarray(nibabel.load(ANATOMICAL).dataobj, dtype=np.float64)
    turn = agent.ask(load_case(ANATOMICAL), "What is the mean intensity?")
    mean, stats, picture, broken = turn.trajectory.steps
    assert mean["ok"] and mean["tool"] == "mean_intensity"
    assert mean["headline"] == f"The mean intensity is {voxels.mean():.3f}."
    assert mean["data"] == {"result": mean["summary"]} and mean["version"]
    assert stats["ok"] and stats["data"] == {"percentile": 90, "value": pytest.approx(np.percentile(voxels, 90))}
    assert picture["ok"] and len(picture["outputs"]) == 1
    render = ArtifactStore(Home(home).artifacts).get(picture["outputs"][0])
    assert render.kind == "render" and render.path.read_bytes().startswith(b"\x89PNG")
    assert not broken["ok"] and "this scan is too small for me" in broken["error"]
    assert f"{voxels.mean():.3f}" in turn.answer

    server_script.rename(server_script.with_suffix(".gone"))
    restarted = Agent(policy, policy_id, home=Home(home), memory=False)
    (problem,) = restarted.registry.problems
    assert "scan_stats" in problem and "stats_server.py" in problem and "No such file" in problem
    assert "mean_intensity" not in restarted.registry
    again = restarted.ask(load_case(ANATOMICAL), "What is the mean intensity?")
    assert not again.trajectory.steps[0]["ok"] and "unknown tool 'mean_intensity'" in again.trajectory.steps[0]["error"]
    assert again.answer

    removed = CliRunner().invoke(app, ["tools", "remove-mcp", "scan_stats"])
    assert removed.exit_code == 0 and "5 tool(s)" in removed.stdout
    assert not Registry.default().problems and "mean_intensity" not in Registry.default()


def test_streamable_http_server_with_a_named_case_argument(server_script, home, tmp_path):
    import socket
    import time

    from macro.tools.executor import ToolExecutor

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, str(server_script), "http", str(port)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert time.monotonic() < deadline and server.poll() is None, "the test server did not start"
            time.sleep(0.2)
        url = f"http://127.0.0.1:{port}/mcp"
        _add(url, "--modality", "mr,ct", "--name", "remote", "--case-arg", "path")
        registry = Registry.default()
        stats = registry.get("intensity_stats")
        assert stats.spec.modalities == ("mr", "ct") and "mean_intensity" in registry  # no `path`: called without
        executor = ToolExecutor(registry, ArtifactStore(Home(home).artifacts))
        _, step, _ = executor.run({"name": "intensity_stats", "args": {"percentile": 10}}, load_case(ANATOMICAL), [])
        voxels = np.asarray(nibabel.load(ANATOMICAL).dataobj, dtype=np.float64)
        assert step.ok and step.data["value"] == pytest.approx(np.percentile(voxels, 10))
    finally:
        server.terminate()
        server.wait(10)
    problems = Registry.default().problems
    assert len(problems) == 1 and url in problems[0] and "remote" in problems[0]


def test_add_mcp_refuses_what_it_cannot_offer(server_script, home):
    python = f"{sys.executable} {server_script}"
    for options, expected in (
        (["--modality", "xx"], "unknown modality 'xx'"),
        (["--modality", "mr", "--case-arg", "scan"], "no tool of MCP server 'scan_stats' has an argument 'scan'"),
        (["--modality", "mr", "--name", "Bad Name"], "MCP server name 'Bad Name'"),
        (["--modality", "mr", "--dims", "4"], "--dims"),
    ):
        result = CliRunner().invoke(app, ["tools", "add-mcp", python, *options])
        assert result.exit_code == 2 and expected in result.output, result.output
    missing = CliRunner().invoke(app, ["tools", "add-mcp", f"{sys.executable} nothing.py", "--modality", "mr"])
    assert missing.exit_code == 2 and "nothing.py" in missing.output
    assert not Home.current().mcp_servers.exists()
    gone = CliRunner().invoke(app, ["tools", "remove-mcp", "scan_stats"])
    assert gone.exit_code == 2 and "no MCP server named 'scan_stats'" in gone.output


def test_a_damaged_server_list_is_a_problem_not_a_crash(home):
    Home.current().ensure().mcp_servers.write_text("{not json")
    registry = Registry.default()
    assert "describe_scan" in registry
    (problem,) = registry.problems
    assert "mcp_servers.json" in problem and "add-mcp" in problem


SCHEMA = {
    "type": "object",
    "properties": {
        "case": {"type": "string"},
        "region": {"enum": ["ET", "TC", "WT"], "description": "which part"},
        "level": {"type": "integer", "minimum": 1, "maximum": 5},
        "labels": {"type": "array", "items": {"type": "string"}},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        "scale": {"type": "number", "default": 1.5},
    },
    "required": ["case", "level"],
}


def _server(**changes) -> McpServer:
    remote = RemoteTool(name="scoreIt", description="Scores it.", input_schema=SCHEMA)
    return McpServer(**{"name": "srv", "command": ("true",), "modalities": ("mr",), "tools": (remote,), **changes})


def test_remote_schemas_become_argument_models_without_the_case():
    model = arguments_model(("k", "scoreIt", "score_it"), SCHEMA, drop="case")
    assert set(model.model_fields) == {"region", "level", "labels", "note", "scale"}
    assert model(level=2).model_dump(exclude_unset=True) == {"level": 2}  # the server applies its own defaults
    for bad in ({}, {"level": 9}, {"level": 2, "region": "XX"}, {"level": 2, "labels": "a"}):
        with pytest.raises(ValueError):
            model(**bad)
    schema = model.model_json_schema()["properties"]
    assert schema["level"]["maximum"] == 5 and schema["region"]["description"] == "which part"
    tool = make_tool(_server(), _server().tools[0], set())
    assert tool.name == "score_it" and tool.case_arg == "case"
    assert make_tool(_server(case_arg="note"), _server().tools[0], set()).case_arg == "note"


def test_names_and_descriptions_fit_the_tool_contract():
    assert macro_name("meanIntensity", "srv", set()) == "mean_intensity"
    assert macro_name("describe_scan", "srv", {"describe_scan"}) == "srv_describe_scan"
    assert macro_name("3d-Volume", "srv", set()) == "srv_3d_volume"
    long = "Computes " + "a very careful measurement " * 20
    short = short_description(long, "x", "srv")
    assert len(short) <= 200 and short.endswith(" …") and long.startswith(short[:-2])
    assert short_description("", "x", "srv") == "Tool x of the MCP server srv."


def test_a_tool_and_its_arguments_pickle_into_a_worker_as_plain_data():
    tool = make_tool(_server(), _server().tools[0], set())
    args = tool.args_schema(level=3)
    tool2, args2 = pickle.loads(pickle.dumps((tool, args)))
    assert tool2.name == tool.name and tool2.server == tool.server and tool2.spec == tool.spec
    assert args2.model_dump(exclude_unset=True) == {"level": 3}


def test_results_become_tool_results_and_error_results_raise(home):
    case = load_case(ANATOMICAL)
    ctx = ToolContext(case=case, store=ArtifactStore(Home(home).artifacts))
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
    result = to_result(
        types.CallToolResult(
            content=[
                types.TextContent(type="text", text="Value is 4. Done."),
                types.ImageContent(type="image", data=png, mimeType="image/png"),
                types.EmbeddedResource(
                    type="resource", resource=types.TextResourceContents(uri="x://y", text="t", mimeType="text/plain")
                ),
            ],
            structuredContent={"value": 4},
        ),
        ctx,
        "score_it",
    )
    assert result.text == "Value is 4. Done." and result.data == {"value": 4}
    assert [a["kind"] for a in result.artifacts] == ["render"] and "resource" in result.caveats[0]
    failed = types.CallToolResult(content=[types.TextContent(type="text", text="bad input")], isError=True)
    with pytest.raises(MacroError, match="score_it failed on its MCP server: bad input"):
        to_result(failed, ctx, "score_it")
    garbled = types.CallToolResult(content=[types.ImageContent(type="image", data="AAAA", mimeType="image/png")])
    with pytest.raises(MacroError, match="cannot be decoded"):
        to_result(garbled, ctx, "score_it")
