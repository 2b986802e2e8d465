"""``macro mcp serve``: a real MCP client of the official SDK lists and calls MACRO's tools over stdio and over
streamable HTTP, on real scans from the nibabel and pydicom wheels; paths outside the roots are refused without
stopping the server; calls of one ``thread`` share their artifacts."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import nibabel
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from pydantic import BaseModel
from pydicom.data import get_testdata_file

from macro.tools.base import MacroTool, ToolContext, ToolResult, ToolSpec
from macro.tools.registry import Registry

ANATOMICAL = Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def scans(tmp_path) -> dict[str, Path]:
    """A root holding two real scans, and one scan outside it."""
    root, elsewhere = tmp_path / "scans", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    shutil.copy(ANATOMICAL, root / "anatomical.nii")
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "ct.dcm")
    shutil.copy(ANATOMICAL, elsewhere / "private.nii")
    return {"root": root, "mr": root / "anatomical.nii", "ct": root / "ct.dcm", "outside": elsewhere / "private.nii"}


def _command(home: Path, root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "macro.cli", "mcp", "serve", "--root", str(root), *extra]


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "MACRO_HOME": str(home)}


async def _exercise(session: ClientSession, scans: dict[str, Path]) -> None:
    """What both transports must do: list, call with text + structured data + image + readable resource, refuse
    a path outside the roots, and keep serving."""
    await session.initialize()
    tools = {tool.name: tool for tool in (await session.list_tools()).tools}
    assert {"describe_scan", "render_slice", "measure_volume", "segment_brain_tumor"} <= set(tools)
    render = tools["render_slice"].inputSchema
    assert render["required"][0] == "case" and {"case", "thread", "axis"} <= set(render["properties"])
    assert (
        "mask" in tools["measure_volume"].description and "segment_brain_tumor" in tools["measure_volume"].description
    )

    described = await session.call_tool("describe_scan", {"case": str(scans["ct"])})
    assert not described.isError, described.content
    assert described.content[0].text.startswith(described.structuredContent["headline"])
    assert "CT" in described.structuredContent["headline"] and "128x128" in described.content[0].text
    assert described.structuredContent["tool"] == "describe_scan" and described.structuredContent["data"]

    rendered = await session.call_tool("render_slice", {"case": "anatomical.nii", "axis": "axial", "thread": "t1"})
    assert not rendered.isError, rendered.content
    kinds = [block.type for block in rendered.content]
    assert kinds[0] == "text" and "image" in kinds and "resource_link" in kinds
    image = next(block for block in rendered.content if block.type == "image")
    assert image.mimeType == "image/png" and base64.b64decode(image.data).startswith(PNG_MAGIC)
    (artifact,) = rendered.structuredContent["artifacts"]
    assert artifact["kind"] == "render" and "path" not in artifact
    link = next(block for block in rendered.content if block.type == "resource_link")
    assert str(link.uri) == artifact["uri"]
    read = await session.read_resource(link.uri)
    assert base64.b64decode(read.contents[0].blob) == base64.b64decode(image.data)
    listed = await session.list_resources()
    assert artifact["uri"] in {str(resource.uri) for resource in listed.resources}

    refused = await session.call_tool("describe_scan", {"case": str(scans["outside"])})
    assert refused.isError
    message = refused.content[0].text
    assert str(scans["outside"]) in message and str(scans["root"].resolve()) in message and "--root" in message
    escaped = await session.call_tool("describe_scan", {"case": "../elsewhere/private.nii"})
    assert escaped.isError and "outside the folders" in escaped.content[0].text
    wrong = await session.call_tool("measure_volume", {"case": str(scans["ct"]), "region": "WT"})
    assert wrong.isError and "error:" in wrong.content[0].text  # a 2D CT: the tool's own message, like the agent's

    again = await session.call_tool("describe_scan", {"case": str(scans["mr"])})
    assert not again.isError and "MR" in again.structuredContent["headline"]


def test_stdio_client_lists_and_calls_tools_and_the_server_survives_bad_paths(scans, tmp_path):
    home = tmp_path / "home"
    parameters = StdioServerParameters(
        command=sys.executable, args=_command(home, scans["root"])[1:], env=_env(home), cwd=str(tmp_path)
    )

    async def main():
        with open(tmp_path / "stderr.txt", "w") as errlog:
            async with stdio_client(parameters, errlog=errlog) as (read, write), ClientSession(read, write) as session:
                await _exercise(session, scans)

    start = time.perf_counter()
    anyio.run(main)
    assert time.perf_counter() - start < 60
    assert "serving" in (tmp_path / "stderr.txt").read_text()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(port: int, process: subprocess.Popen, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited ({process.returncode}): {process.stderr.read()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing listened on port {port} within {seconds:g} s")


def test_streamable_http_client_lists_and_calls_tools(scans, tmp_path):
    home, port = tmp_path / "home", _free_port()
    command = _command(home, scans["root"], "--http", str(port))
    server = subprocess.Popen(command, env=_env(home), cwd=scans["root"], stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(port, server)

        async def main():
            url = f"http://127.0.0.1:{port}/mcp"
            async with streamable_http_client(url) as (read, write, _), ClientSession(read, write) as session:
                await _exercise(session, scans)

        anyio.run(main)
        assert server.poll() is None
    finally:
        server.terminate()
        server.wait(10)
    assert f"http://127.0.0.1:{port}/mcp" in server.stderr.read()


class _Args(BaseModel):
    pass


class _MakeMask(MacroTool):
    name: str = "make_mask"
    description: str = "Writes a mask."
    args_schema: type[BaseModel] = _Args
    spec = ToolSpec(modalities=("*",), outputs={"mask": "mask"})

    def execute(self, ctx: ToolContext, args: _Args) -> ToolResult:
        import numpy as np

        art = ctx.store.save_nifti(np.ones(ctx.case.shape, np.uint8), ctx.case.affine, "mask", "mask")
        return ToolResult(text="Mask written.", artifacts=[art.ref()])


class _UseMask(MacroTool):
    name: str = "use_mask"
    description: str = "Reads the newest mask."
    args_schema: type[BaseModel] = _Args
    spec = ToolSpec(modalities=("*",), inputs={"case": "image", "mask": "mask"})

    def execute(self, ctx: ToolContext, args: _Args) -> ToolResult:
        mask = ctx.latest("mask")
        if mask is None:
            raise ValueError("no mask in this thread")
        return ToolResult(text=f"Used {mask.id}.", data={"mask": mask.id})


def test_calls_of_one_thread_share_artifacts_and_other_calls_do_not(scans, home, monkeypatch):
    from macro.mcp_server.server import ARTIFACT_URI, MacroServer

    monkeypatch.setenv("MACRO_TOOL_ISOLATION", "0")  # the tools above live in this test module only
    server = MacroServer([scans["root"]], registry=Registry([_MakeMask(), _UseMask()]))
    case = str(scans["mr"])
    made = server.call("make_mask", {"case": case, "thread": "a"})
    mask_uri = made.structuredContent["artifacts"][0]["uri"]
    assert [block.type for block in made.content] == ["text", "resource_link"]  # a NIfTI mask: no image
    assert server.artifact_path(mask_uri).name.endswith(".nii.gz")

    used = server.call("use_mask", {"case": case, "thread": "a"})
    assert not used.isError and ARTIFACT_URI + used.structuredContent["data"]["mask"] == mask_uri
    for other in ({"case": case, "thread": "b"}, {"case": case}):
        alone = server.call("use_mask", other)
        assert alone.isError and "no mask in this thread" in alone.content[0].text
    assert server.call("use_mask", {"case": str(scans["ct"]), "thread": "a"}).isError  # another case's mask: never


def test_unknown_resources_and_missing_scans_are_errors_naming_them(scans, home, monkeypatch):
    from mcp.shared.exceptions import McpError

    from macro.mcp_server.server import ARTIFACT_URI, MacroServer

    monkeypatch.setenv("MACRO_TOOL_ISOLATION", "0")
    server = MacroServer([scans["root"]], registry=Registry([_MakeMask()]))
    for uri in (ARTIFACT_URI + "run-x/nothing.png", ARTIFACT_URI + "../../etc/passwd", "file:///etc/passwd"):
        with pytest.raises(McpError, match="unknown resource"):
            server.artifact_path(uri)
    missing = server.call("make_mask", {"case": "missing.nii"})
    assert missing.isError and "missing.nii" in missing.content[0].text and "not found" in missing.content[0].text
    unknown = server.call("no_such_tool", {"case": str(scans["mr"])})
    assert unknown.isError and "unknown tool 'no_such_tool'" in unknown.content[0].text
