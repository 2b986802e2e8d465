"""What ``macro mcp serve`` serves: every registered tool (composites and tools of added MCP servers included), run
through the agent's own executor, so worker isolation, limits, the result cache and the artifact store apply.

A tool's MCP input schema is the schema the policy sees plus ``case`` (the scan's path; four comma-separated NIfTI
for multi-sequence MRI, as on the command line) and an optional ``thread``: calls that name the same thread share
their artifact history and tool state in this process, so ``measure_volume`` finds the mask an earlier
``segment_brain_tumor`` call wrote, as within one agent thread. A scan is read only under the allowed roots
(links resolved first); anything else is an error result naming the path and the roots. A result carries its text
(headline first), its structured data and artifacts: PNG renders and heatmaps as images, and every artifact as a
resource link that ``resources/read`` serves from the artifact store.
"""

from __future__ import annotations

import base64
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from langchain_core.utils.function_calling import convert_to_openai_tool

from macro.artifacts import ArtifactStore
from macro.case import Case, load_case
from macro.config import Home
from macro.errors import CaseError, MacroError
from macro.skills.library import load_composites
from macro.tools.base import MacroTool
from macro.tools.executor import Step, ToolExecutor
from macro.tools.mcp_servers import INSTALL
from macro.tools.registry import Registry
from macro.tools.worker import POOL, check_voxels, on_voxels

try:
    import anyio
    import mcp.types as types
    from mcp.server.lowlevel import Server
    from mcp.server.lowlevel.helper_types import ReadResourceContents
    from mcp.shared.exceptions import McpError
except ImportError as exc:
    raise MacroError(f"MCP support is not installed (no module {exc.name}); install it with: {INSTALL}") from None

ARTIFACT_URI = "macro://artifact/"
MAX_THREADS = 64  # threads whose history and tool state the server keeps, least recently used dropped first
LISTED_ARTIFACTS = 100  # the newest artifacts of this process that resources/list shows
CASE_ARG = "case"
THREAD_ARG = "thread"
MIME = {".png": "image/png", ".gz": "application/gzip", ".json": "application/json"}
INSTRUCTIONS = (
    "MACRO's medical imaging tools. Every tool takes `case`: the path of a scan (NIfTI, DICOM file or series folder, "
    "PNG/JPEG, a BraTS folder, or four comma-separated NIfTI T1,T1ce,T2,FLAIR) under the folders this server may "
    "read. Give the same `thread` to calls that build on each other (segment_brain_tumor, then measure_volume on "
    "its mask). Results lead with a one-sentence headline; images and masks come back as artifacts."
)


@dataclass
class _Thread:
    """What the calls naming one thread share, as an agent thread's turns do; its lock runs them one at a time."""

    history: list[dict] = field(default_factory=list)
    session: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class MacroServer:
    """The MCP server object (:attr:`server`) over one registry, one home and the allowed roots."""

    def __init__(self, roots: list[Path], home: Home | None = None, registry: Registry | None = None):
        self.roots = [Path(root).expanduser().resolve() for root in roots]
        self.home = (home or Home.current()).ensure()
        self.registry = registry or load_composites(Registry.default(), self.home)
        self.tools = [self.describe(tool) for tool in self.registry.all()]
        self._threads: OrderedDict[str, _Thread] = OrderedDict()
        self._made: list[dict] = []  # the newest artifact refs this process's calls wrote, oldest first
        self._lock = threading.Lock()
        self.server = self._build()
        POOL.prestart()  # a tool worker's imports overlap with the client's handshake

    def _build(self) -> Server:
        server = Server("macro", version=version("macro-agent"), instructions=INSTRUCTIONS)

        @server.list_tools()
        async def list_tools() -> list[types.Tool]:
            return self.tools

        @server.call_tool()
        async def call_tool(name: str, arguments: dict) -> types.CallToolResult:
            return await anyio.to_thread.run_sync(self.call, name, arguments)

        @server.list_resources()
        async def list_resources() -> list[types.Resource]:
            with self._lock:
                made = list(self._made)
            return [_resource_link(ref) for ref in reversed(made)]

        @server.read_resource()
        async def read_resource(uri) -> list[ReadResourceContents]:
            path = self.artifact_path(str(uri))
            return [ReadResourceContents(path.read_bytes(), _mime(path))]

        return server

    def describe(self, tool: MacroTool) -> types.Tool:
        """The tool as MCP lists it: its policy-facing schema plus ``case`` and ``thread``."""
        parameters = convert_to_openai_tool(tool)["function"]["parameters"]
        properties = {
            CASE_ARG: {
                "type": "string",
                "description": "path of the scan (a file or folder, or four comma-separated NIfTI: T1,T1ce,T2,FLAIR)",
            },
            **parameters.get("properties", {}),
            THREAD_ARG: {
                "type": "string",
                "description": "any name; calls with the same thread share earlier calls' artifacts (masks, renders)",
            },
        }
        needs = sorted(tool.spec.needs)
        producers = sorted(t.name for t in self.registry.atomic().values() if set(t.spec.outputs.values()) & set(needs))
        note = (
            f" Needs a {', '.join(needs)} from an earlier call in the same thread ({', '.join(producers)}) unless "
            "the scan ships one."
            if needs
            else ""
        )
        modalities = ", ".join(tool.spec.modalities).replace("*", "any modality")
        return types.Tool(
            name=tool.name,
            description=f"{tool.description} Accepts {modalities}; {'/'.join(map(str, tool.spec.dims))}D.{note}",
            inputSchema={
                "type": "object",
                "properties": properties,
                "required": [CASE_ARG, *parameters.get("required", [])],
            },
        )

    def call(self, name: str, arguments: dict) -> types.CallToolResult:
        """One tool call (blocking: run in a worker thread of the event loop). Every failure is an error result."""
        arguments = dict(arguments)
        source, thread_id = arguments.pop(CASE_ARG, ""), arguments.pop(THREAD_ARG, None)
        try:
            case = self.open_case(source)
        except MacroError as exc:
            return _error(f"error: {exc}")
        thread = self._thread(thread_id)
        with thread.lock:
            executor = ToolExecutor(self.registry, ArtifactStore(self.home.artifacts))
            message, step, refs = executor.run(
                {"name": name, "args": arguments, "id": "mcp"}, case, thread.history, thread.session
            )
            thread.history += refs
        if not step.ok:
            return _error(str(message.content))
        with self._lock:
            self._made = (self._made + refs)[-LISTED_ARTIFACTS:]
        return self._result(step, refs, thread_id)

    def open_case(self, source: str) -> Case:
        """The scan at ``source`` (relative paths are taken from the first root), read only when every file it
        consists of lies under a root; its voxels are checked where the tools will read them."""
        whole = self._inside(source, check=False).exists()  # else a comma separates files (it may be in a name)
        paths = [self._inside(source)] if whole else [self._inside(part) for part in source.split(",")]
        case = load_case(paths if len(paths) > 1 else paths[0], check=False)
        for path in (*case.paths, *([case.label_path] if case.label_path else [])):
            self._inside(str(path))
        on_voxels(check_voxels, case)
        return case

    def _inside(self, text: str, check: bool = True) -> Path:
        path = Path(text.strip()).expanduser()
        real = (path if path.is_absolute() else self.roots[0] / path).resolve()
        if check and not any(real.is_relative_to(root) for root in self.roots):
            roots = ", ".join(map(str, self.roots))
            raise CaseError(
                text, f"is outside the folders this server may read ({roots}); start it with --root to add one"
            )
        return real

    def _thread(self, thread_id: str | None) -> _Thread:
        if thread_id is None:
            return _Thread()
        with self._lock:
            thread = self._threads.pop(thread_id, None) or _Thread()
            self._threads[thread_id] = thread
            while len(self._threads) > MAX_THREADS:
                self._threads.popitem(last=False)
        return thread

    def _result(self, step: Step, refs: list[dict], thread_id: str | None) -> types.CallToolResult:
        text = step.summary if step.summary.startswith(step.headline) else f"{step.headline}\n{step.summary}"
        text += "".join(f"\nCaveat: {caveat}" for caveat in step.caveats)
        content: list = [types.TextContent(type="text", text=text)]
        for ref in refs:
            path = self.artifact_path(ARTIFACT_URI + ref["id"])
            if _mime(path) == "image/png":
                data = base64.b64encode(path.read_bytes()).decode()
                content.append(types.ImageContent(type="image", data=data, mimeType="image/png"))
            content.append(_resource_link(ref))
        artifacts = [{**_public(ref), "uri": ARTIFACT_URI + ref["id"]} for ref in refs]
        structured = {
            "tool": step.tool,
            "headline": step.headline,
            "text": step.summary,
            "data": step.data,
            "caveats": step.caveats,
            "artifacts": artifacts,
            "thread": thread_id,
            "cached": step.cached,
        }
        return types.CallToolResult(content=content, structuredContent=structured)

    def artifact_path(self, uri: str) -> Path:
        """The file of an artifact URI; an unknown one (or one outside the artifact store) is an MCP error."""
        try:
            if not uri.startswith(ARTIFACT_URI):
                raise KeyError(uri)
            return ArtifactStore(self.home.artifacts).get(uri[len(ARTIFACT_URI) :]).path
        except KeyError:
            message = f"unknown resource {uri!r}; this server serves artifacts as {ARTIFACT_URI}<run>/<file>"
            raise McpError(types.ErrorData(code=types.INVALID_PARAMS, message=message)) from None


def _public(ref: dict) -> dict:
    """An artifact ref without its file path (which names the home's folders); the URI stands for it."""
    return {key: value for key, value in ref.items() if key != "path"}


def _mime(path: Path) -> str:
    return MIME.get(path.suffix, "application/octet-stream")


def _resource_link(ref: dict) -> types.ResourceLink:
    return types.ResourceLink(
        type="resource_link",
        uri=ARTIFACT_URI + ref["id"],
        name=ref["id"],
        description=f"{ref['kind']} artifact",
        mimeType=_mime(Path(ref["id"])),
    )


def _error(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], isError=True)
