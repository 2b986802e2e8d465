"""External MCP servers whose tools MACRO offers: how to reach each one and what it offered when it was added.

The list lives in ``MACRO_HOME/mcp_servers.json`` (``macro tools add-mcp`` / ``remove-mcp``), written atomically
inside the owner-only home, since a command line or URL may name private folders or hosts. An entry is plain data,
so a tool made from it pickles into a tool worker and opens its own connection there. Connections use the official
MCP SDK: a command line over stdio (its stderr is kept, so a server that fails to start is reported with its own
words), or an http(s) URL over streamable HTTP. Every connection is opened in a thread of its own with its own
event loop and a time limit, so a caller inside an event loop (the MCP server, a web UI) can use it too.
"""

from __future__ import annotations

import json
import shlex
import tempfile
import threading
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, Awaitable, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from macro.artifacts import atomic_write_bytes, locked_file
from macro.config import Home
from macro.errors import MacroError

CONNECT_S = 15.0  # to start a server, shake hands and list its tools
INSTALL = "pip install 'macro-agent[mcp]'"


class RemoteTool(BaseModel):
    """One tool as its server listed it."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str = ""
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class McpServer(BaseModel):
    """A remembered server: a command line (stdio, run in ``cwd``) or a URL, what its tools accept, and the tools."""

    model_config = ConfigDict(frozen=True)

    name: str
    command: tuple[str, ...] = ()
    url: str | None = None
    cwd: str | None = None
    modalities: tuple[str, ...]
    dims: tuple[int, ...] = (2, 3)
    case_arg: str | None = None  # as given to add-mcp; None: each tool's ``case``, else ``path``, else none
    tools: tuple[RemoteTool, ...] = ()

    @property
    def where(self) -> str:
        return self.url or shlex.join(self.command)


class ServerFailure(MacroError):
    """A server that cannot be reached or that answered with an error; the message names it."""


def target(text: str) -> dict:
    """``command``/``url`` fields of an entry from what the user typed: an http(s) URL, else a command line."""
    if text.startswith(("http://", "https://")):
        return {"url": text}
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise MacroError(f"cannot split the MCP server's command line {text!r}: {exc}") from None
    if not words:
        raise MacroError("the MCP server's command line is empty; give a command or an http(s) URL")
    return {"command": tuple(words)}


def load(home: Home | None = None) -> list[McpServer]:
    """The remembered servers (none when the file does not exist); a damaged file is an error naming it."""
    path = (home or Home.current()).mcp_servers
    if not path.exists():
        return []
    try:
        entries = json.loads(path.read_text())["servers"]
        return [McpServer(**entry) for entry in entries]
    except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
        problem = str(exc).splitlines()[0]
        raise MacroError(
            f"{path}: not a usable list of MCP servers ({type(exc).__name__}: {problem}); fix or delete it and "
            "add the servers again with macro tools add-mcp"
        ) from None


def update(change: Callable[[list[McpServer]], list[McpServer]], home: Home | None = None) -> list[McpServer]:
    """Read, change and write the list under a lock, so two ``add-mcp`` at once keep both servers."""
    home = (home or Home.current()).ensure()
    with locked_file(home.root / "locks" / "mcp_servers.lock"):
        servers = change(load(home))
        payload = {"servers": [server.model_dump(mode="json") for server in servers]}
        atomic_write_bytes(home.mcp_servers, json.dumps(payload, indent=2).encode())
    return servers


def _sdk():
    try:
        import mcp
        from mcp.client.stdio import StdioServerParameters, stdio_client
        from mcp.client.streamable_http import streamable_http_client
    except ImportError:
        raise ServerFailure(f"MCP support is not installed; install it with: {INSTALL}") from None
    return mcp.ClientSession, StdioServerParameters, stdio_client, streamable_http_client


@asynccontextmanager
async def _session(server: McpServer, errlog):
    session_class, parameters, stdio_client, http_client = _sdk()
    if server.url:
        transport = http_client(server.url)
    else:
        command, *args = server.command
        transport = stdio_client(parameters(command=command, args=args, cwd=server.cwd), errlog=errlog)
    async with transport as streams, session_class(streams[0], streams[1]) as session:
        yield session, await session.initialize()


def _run(server: McpServer, work: Callable[[Any, Any], Awaitable[Any]], seconds: float) -> Any:
    """``work(session, initialize_result)`` on a fresh connection to ``server``, within ``seconds``, in a thread of
    its own; every failure becomes one :class:`ServerFailure` naming the server, with the end of its stderr."""
    import anyio

    box: dict[str, Any] = {}

    def thread() -> None:
        async def main() -> None:
            with anyio.fail_after(seconds):
                async with _session(server, errlog) as (session, info):
                    box["value"] = await work(session, info)

        try:
            anyio.run(main)
        except BaseException as exc:  # reported to the caller, whatever the transport raised
            box["error"] = exc

    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as errlog:
        runner = threading.Thread(target=thread, name=f"mcp-{server.name}", daemon=True)
        runner.start()
        runner.join()
        if "error" not in box:
            return box["value"]
        errlog.seek(0)
        stderr = errlog.read()[-400:].strip()
    error = box["error"]
    if isinstance(error, ServerFailure):
        raise error
    tail = f"; its stderr ends: {' '.join(stderr.split())}" if stderr else ""
    raise ServerFailure(f"MCP server {server.name!r} ({server.where}) {_describe(error, seconds)}{tail}") from None


def _describe(error: BaseException, seconds: float) -> str:
    """One phrase for what went wrong, from the innermost exception of an exception group."""
    while getattr(error, "exceptions", None):  # an exception group, from the transport's task group
        error = error.exceptions[0]
    if isinstance(error, TimeoutError):
        return f"did not answer within {seconds:g} s"
    if isinstance(error, FileNotFoundError):
        return f"cannot be started: {error.strerror or error} ({error.filename})"
    return f"failed: {type(error).__name__}: {str(error)[:300] or 'no message'}"


def describe_server(server: McpServer, seconds: float = CONNECT_S) -> tuple[str, list[RemoteTool]]:
    """The server's own name and the tools it lists now (every page of them)."""

    async def work(session, info):
        from mcp.types import PaginatedRequestParams

        tools, cursor = [], None
        while True:
            page = await session.list_tools(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
            tools += [
                RemoteTool(name=t.name, description=t.description or "", input_schema=t.inputSchema) for t in page.tools
            ]
            cursor = page.nextCursor
            if not cursor:
                return info.serverInfo.name, tools

    return _run(server, work, seconds)


def call_tool(server: McpServer, name: str, arguments: dict, seconds: float):
    """One ``tools/call`` on a fresh connection: the SDK's ``CallToolResult`` (``isError`` set when the tool failed)."""

    async def work(session, info):
        return await session.call_tool(name, arguments, read_timeout_seconds=timedelta(seconds=seconds))

    return _run(server, work, seconds)


def forget(name: str, home: Home | None = None) -> McpServer:
    """Remove the server called ``name``; an unknown name is an error listing the known ones."""
    removed: list[McpServer] = []

    def change(servers: list[McpServer]) -> list[McpServer]:
        removed.extend(s for s in servers if s.name == name)
        if not removed:
            known = ", ".join(s.name for s in servers) or "none"
            raise MacroError(f"no MCP server named {name!r} was added (added: {known})")
        return [s for s in servers if s.name != name]

    update(change, home)
    return removed[0]
