"""Tools of external MCP servers as MACRO tools, offered, validated, run and recorded like any other.

Each remembered tool (:mod:`macro.tools.mcp_servers`) becomes a ``MacroTool`` class of its own, made from plain
data and validated at definition like a built-in. The policy sees the tool's own JSON schema less the argument that
takes the scan: the executor supplies the case to a built-in, and here that means writing the scan's path into that
argument. An instance pickles as the data it was made from and rebuilds its class in the tool worker, where
:meth:`execute` connects to the server, so a hanging server is stopped by the worker's limits like any slow tool.
The result becomes a :class:`ToolResult`: its text (headline first sentence), its structured content as data and
its images as ``render`` artifacts of the run.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, Field, create_model

from macro.config import Home
from macro.errors import MacroError
from macro.tools.base import TOOL_NAME, MacroTool, ToolContext, ToolResult, ToolSpec
from macro.tools.mcp_servers import McpServer, RemoteTool, ServerFailure, describe_server, load, target, update
from macro.tools.mcp_servers import call_tool as call_remote

MAX_TEXT = 4000  # characters of a result's text passed on to the policy
CASE_ARGS = ("case", "path")  # the argument that takes the scan, when add-mcp was not told
SERVER_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_JSON_TYPES = {"string": str, "integer": int, "number": float, "boolean": bool, "object": dict[str, Any]}


class _Arguments(BaseModel):
    """Base of the argument models made from remote schemas: an instance pickles as its tool's key and values."""

    origin: ClassVar[tuple[str, str, str]] = ("", "", "")

    def __reduce__(self):
        return _arguments, (self.origin, self.model_dump(mode="json", exclude_unset=True))


class _Remote:
    """What every generated MCP tool class adds to ``MacroTool``; ``server``, ``remote`` (the tool's name on its
    server) and ``case_arg`` are class attributes of each."""

    def __reduce__(self):
        return _tool, (self.server.model_dump_json(), self.remote, self.name)

    def execute(self, ctx: ToolContext, args: BaseModel) -> ToolResult:
        arguments = args.model_dump(mode="json", exclude_unset=True)
        if self.case_arg:
            source = ctx.case.source or str(ctx.case.paths[0])
            arguments[self.case_arg] = ",".join(source) if isinstance(source, tuple) else source
        try:
            result = call_remote(self.server, self.remote, arguments, self.spec.timeout_s)
        except ServerFailure as exc:
            raise MacroError(f"{self.name}: {exc}") from None
        return to_result(result, ctx, self.name)


def mcp_server_of(tool: MacroTool) -> str | None:
    """The name of the MCP server a tool comes from, or None for a tool of MACRO or a plug-in."""
    return tool.server.name if isinstance(tool, _Remote) else None


def to_result(result, ctx: ToolContext, name: str) -> ToolResult:
    """An SDK ``CallToolResult`` as a tool result; an error result raises its text, as a failed built-in does."""
    text = "\n".join(block.text for block in result.content if block.type == "text").strip()
    if result.isError:
        raise MacroError(f"{name} failed on its MCP server: {text[:MAX_TEXT] or 'no message'}")
    data = result.structuredContent or {}
    artifacts = [
        _save_image(block, ctx, name, i).ref() for i, block in enumerate(result.content) if block.type == "image"
    ]
    dropped = sorted({block.type for block in result.content if block.type not in ("text", "image")})
    caveats = [f"MACRO did not keep the {', '.join(dropped)} content the MCP server returned."] if dropped else []
    text = text or (json.dumps(data)[:MAX_TEXT] if data else f"{name} returned no text.")
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT] + " [cut]"
    return ToolResult(text=text, caveats=caveats, data=data, artifacts=artifacts)


def _save_image(block, ctx: ToolContext, name: str, index: int):
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(base64.b64decode(block.data))) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (ValueError, UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise MacroError(f"{name} returned an image ({block.mimeType}) that cannot be decoded: {exc}") from None
    return ctx.store.save_png(rgb, "render", f"{name}-{index}", {"mime_type": block.mimeType})


def case_argument(server: McpServer, remote: RemoteTool) -> str | None:
    """The remote argument that takes the scan's path: the one add-mcp named, else ``case``, else ``path``, else
    none (the tool is called without the scan)."""
    properties = remote.input_schema.get("properties") or {}
    wanted = (server.case_arg,) if server.case_arg else CASE_ARGS
    return next((arg for arg in wanted if arg in properties), None)


def macro_name(remote: str, server: str, taken: set[str]) -> str:
    """``remote`` in snake case; prefixed with the server's name when that is not a valid tool name or is taken."""
    snake = re.sub(r"[^a-z0-9]+", "_", re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", remote).lower()).strip("_")
    if TOOL_NAME.match(snake) and snake not in taken:
        return snake
    return f"{server}_{snake}"[:48].rstrip("_")


def short_description(text: str, remote: str, server: str) -> str:
    """The remote description on one line, cut at a word to the 200 characters a tool description may have."""
    text = " ".join(text.split()) or f"Tool {remote} of the MCP server {server}."
    return text if len(text) <= 200 else text[: text.rfind(" ", 0, 198) or 198].rstrip(",;: ") + " …"


def _annotation(schema: dict) -> Any:
    """A Python type for a JSON schema: enums as literals, unions of branches, typed lists; anything else any JSON."""
    if "enum" in schema or "const" in schema:
        return Literal[tuple(schema.get("enum", [schema.get("const")]))]
    branches = schema.get("anyOf") or schema.get("oneOf")
    kinds = schema.get("type")
    if isinstance(kinds, list):
        branches = [{**schema, "type": kind} for kind in kinds]
    if branches:
        return Union[tuple(None if b.get("type") == "null" else _annotation(b) for b in branches)]
    if kinds == "array":
        return list[_annotation(schema["items"])] if isinstance(schema.get("items"), dict) else list
    return _JSON_TYPES.get(kinds, Any)


_BOUNDS = {
    "minimum": "ge",
    "maximum": "le",
    "exclusiveMinimum": "gt",
    "exclusiveMaximum": "lt",
    "minLength": "min_length",
    "maxLength": "max_length",
    "minItems": "min_length",
    "maxItems": "max_length",
}


def arguments_model(key: tuple[str, str, str], schema: dict, drop: str | None) -> type[BaseModel]:
    """The pydantic model of a remote input schema without ``drop`` (the scan's argument). Optional arguments
    without a default are left out of the call unless given, so the server applies its own defaults."""
    required = set(schema.get("required") or ())
    fields = {}
    for arg, prop in (schema.get("properties") or {}).items():
        if arg == drop:
            continue
        annotation = _annotation(prop)
        extra = {field: prop[bound] for bound, field in _BOUNDS.items() if bound in prop}
        if "description" in prop:
            extra["description"] = prop["description"]
        if arg in required:
            default = ...
        else:
            default = prop.get("default")
            annotation = annotation if "default" in prop else Optional[annotation]
        fields[arg] = (annotation, Field(default, **extra))
    model = create_model(f"{key[2]}_arguments", __base__=_Arguments, **fields)
    model.origin = key
    return model


@lru_cache(maxsize=256)
def _tool_class(server_json: str, remote_name: str, name: str) -> type[MacroTool]:
    server = McpServer.model_validate_json(server_json)
    remote = next(t for t in server.tools if t.name == remote_name)
    case_arg = case_argument(server, remote)
    fingerprint = json.dumps([remote.description, remote.input_schema], sort_keys=True).encode()
    namespace = {
        "__module__": __name__,
        "__annotations__": {
            "name": str,
            "description": str,
            "args_schema": type[BaseModel],
            "server": ClassVar[McpServer],
            "remote": ClassVar[str],
            "case_arg": ClassVar[Optional[str]],
        },
        "name": name,
        "description": short_description(remote.description, remote.name, server.name),
        "args_schema": arguments_model((server_json, remote_name, name), remote.input_schema, case_arg),
        "spec": ToolSpec(
            modalities=server.modalities,
            dims=server.dims,
            version=hashlib.sha256(fingerprint).hexdigest()[:7],  # a changed remote tool is a new version
        ),
        "server": server,
        "remote": remote_name,
        "case_arg": case_arg,
    }
    return type(f"Mcp_{name}", (_Remote, MacroTool), namespace)


def _tool(server_json: str, remote_name: str, name: str) -> MacroTool:
    return _tool_class(server_json, remote_name, name)()


def _arguments(key: tuple[str, str, str], values: dict) -> BaseModel:
    return _tool_class(*key).model_fields["args_schema"].default(**values)


def make_tool(server: McpServer, remote: RemoteTool, taken: set[str]) -> MacroTool:
    """The MACRO tool for ``remote``, named so it clashes with none of ``taken``."""
    return _tool(server.model_dump_json(), remote.name, macro_name(remote.name, server.name, taken))


def remember(
    where: str,
    modalities: tuple[str, ...],
    dims: tuple[int, ...],
    existing: list[MacroTool],
    name: str | None = None,
    case_arg: str | None = None,
    home: Home | None = None,
) -> list[MacroTool]:
    """Connect to the server at ``where`` (a command line, run in the current folder, or an http(s) URL), list its
    tools, check that each makes a valid MACRO tool beside the ``existing`` ones, and remember the server under
    ``name`` (default: the name it gives itself), replacing an entry of that name. Returns the tools it adds."""
    entry = McpServer(
        name=name or "new", modalities=modalities, dims=dims, case_arg=case_arg, cwd=os.getcwd(), **target(where)
    )
    told, remotes = describe_server(entry)
    name = name or re.sub(r"[^a-z0-9]+", "_", told.lower()).strip("_")
    if not SERVER_NAME.match(name):
        raise MacroError(
            f"MCP server name {name!r}: use 1-32 lower-case letters, digits or _, starting with a letter (--name)"
        )
    if not remotes:
        raise MacroError(f"MCP server {name!r} ({entry.where}) lists no tools")
    if case_arg and not any(case_arg in (r.input_schema.get("properties") or {}) for r in remotes):
        raise MacroError(f"no tool of MCP server {name!r} has an argument {case_arg!r} (--case-arg)")
    entry = entry.model_copy(update={"name": name, "tools": tuple(remotes)})
    taken = {tool.name for tool in existing if mcp_server_of(tool) != name}  # a server added again keeps its names
    made: list[MacroTool] = []
    for remote in remotes:
        try:
            made.append(make_tool(entry, remote, taken | {t.name for t in made}))
        except Exception as exc:
            raise MacroError(f"MCP server {name!r}, tool {remote.name!r} cannot be offered: {exc}") from None
    update(lambda servers: _replaced(servers, entry), home)
    return made


def _replaced(servers: list[McpServer], entry: McpServer) -> list[McpServer]:
    """``servers`` with ``entry`` in the place of the one of its name, or last: the order the registry adds them in,
    which decides which of two clashing names gets the prefix, stays as it was."""
    if all(server.name != entry.name for server in servers):
        return [*servers, entry]
    return [entry if server.name == entry.name else server for server in servers]


def add_remembered(registry, home: Home | None = None) -> None:
    """Add the tools of every remembered server that answers now. A server that does not answer, a tool it no
    longer lists or one that cannot be made a MACRO tool is reported in ``registry.problems`` and skipped, as a
    broken plug-in is: it never stops the agent from starting. Servers are asked at once, each within its time."""
    try:
        servers = load(home)
    except MacroError as exc:
        registry.problems.append(str(exc))
        return
    if not servers:
        return
    with ThreadPoolExecutor(len(servers)) as pool:
        listed = list(pool.map(_listed, servers))
    for server, offered in zip(servers, listed):
        if isinstance(offered, str):
            registry.problems.append(offered)
            continue
        for remote in server.tools:
            if remote.name not in offered:
                registry.problems.append(
                    f"MCP server {server.name!r} no longer lists its tool {remote.name!r}; "
                    f"add the server again with macro tools add-mcp"
                )
                continue
            try:
                registry.add(make_tool(server, remote, {t.name for t in registry.all()}))
            except Exception as exc:  # one unusable remote schema costs that tool, never the agent
                registry.problems.append(f"MCP server {server.name!r}, tool {remote.name!r}: {exc}")


def _listed(server: McpServer) -> set[str] | str:
    """The names the server lists now, or why it cannot be asked."""
    try:
        return {tool.name for tool in describe_server(server)[1]}
    except ServerFailure as exc:
        return f"{exc}; its tools are not offered"
