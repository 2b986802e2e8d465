"""``macro tools``: the registered tools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from macro.cli.common import err, group, load_scan

tools = group("tools", "Registered tools.")


@tools.command("list")
def tools_list(
    as_json: bool = typer.Option(False, "--json"),
    case: Optional[str] = typer.Option(None, help="only tools offered for this scan"),
):
    """List registered tools (with modalities, inputs, outputs, version)."""
    from langchain_core.utils.function_calling import convert_to_openai_tool

    from macro.agent.local_llm import coverage_warning, untrained_tools
    from macro.skills.library import load_composites
    from macro.tools.mcp_client import mcp_server_of
    from macro.tools.registry import Registry, kind
    from macro.weights import SLOTS

    registry = load_composites(Registry.default())
    tools = registry.for_case(load_scan(case, None)) if case else registry.all()
    untrained = untrained_tools(registry)
    rows = [
        {
            "name": t.name,
            "kind": kind(t),
            "mcp_server": mcp_server_of(t),  # the external MCP server it comes from (macro tools add-mcp)
            "description": t.description,
            "modalities": list(t.spec.modalities),
            "dims": list(t.spec.dims),
            "inputs": t.spec.inputs,
            "outputs": t.spec.outputs,
            "version": t.spec.version,
            "weights": t.spec.weights,
            "weights_in_use": str(SLOTS[t.spec.weights].active()) if t.spec.weights else None,
            "arguments": convert_to_openai_tool(t)["function"]["parameters"].get("properties", {}),  # as narrowed
            "embedded_policy_trained": None if kind(t) != "atomic" else t.name not in untrained,
        }
        for t in tools
    ]
    warning = coverage_warning(untrained)
    if warning:
        err(warning)
    if as_json:
        typer.echo(json.dumps({"tools": rows, "problems": registry.problems}, indent=2))
        return
    for r in rows:
        typer.echo(
            f"{r['name']:<20} {'mcp' if r['mcp_server'] else r['kind']:<9} {r['version']:<7} "
            f"{','.join(r['modalities']):<28} {r['description']}"
        )
    for problem in registry.problems:
        err(f"plug-in skipped: {problem}")


@tools.command("new")
def tools_new(
    name: str = typer.Argument(..., help="the tool's name, snake_case (e.g. intensity_stats)"),
    out: Path = typer.Option(..., "--out", help="folder for the plug-in package (new or empty)"),
):
    """Scaffold a plug-in tool package: a working decorated tool, its spec, entry point, README and contract test."""
    from macro.tools.scaffold import scaffold

    for path in scaffold(name, out):
        typer.echo(path)
    err(f"next: pytest {out}  then  pip install --no-deps -e {out}  then  macro tools list")


@tools.command("add-mcp")
def tools_add_mcp(
    server: str = typer.Argument(..., help="a stdio MCP server's command line (quoted) or a streamable-HTTP URL"),
    modality: str = typer.Option(..., "--modality", help="modalities its tools accept, comma-separated (* any)"),
    name: Optional[str] = typer.Option(None, "--name", help="what to call the server (default: the name it gives)"),
    dims: str = typer.Option("2,3", "--dims", help="dimensionalities its tools accept, comma-separated"),
    case_arg: Optional[str] = typer.Option(
        None, "--case-arg", help="the tools' argument that takes the scan's path (default: case, else path)"
    ),
):
    """Offer an external MCP server's tools to the agent: list them now and remember the server in MACRO_HOME."""
    from macro.tools.mcp_client import mcp_server_of, remember
    from macro.tools.registry import Registry

    try:
        wanted = tuple(sorted({int(d) for d in dims.split(",")}))
    except ValueError:
        raise typer.BadParameter(f"expected 2, 3 or 2,3, got {dims!r}", param_hint="--dims") from None
    if not set(wanted) <= {2, 3}:
        raise typer.BadParameter(f"expected 2, 3 or 2,3, got {dims!r}", param_hint="--dims")
    modalities = tuple(m.strip() for m in modality.split(",") if m.strip())
    added = remember(server, modalities, wanted, Registry.default().all(), name=name, case_arg=case_arg)
    typer.echo(f"added MCP server {mcp_server_of(added[0])!r} ({server}); its tools:")
    for tool in added:
        remote = f" (on the server: {tool.remote})" if tool.remote != tool.name else ""
        typer.echo(f"  {tool.name:<20} {tool.description}{remote}")
    err(
        "the embedded policy has no example requests for these tools, so it will rarely call them; "
        "scripted:PLAN.json and openai:URL policies call them from their descriptions (docs/mcp.md)"
    )


@tools.command("remove-mcp")
def tools_remove_mcp(name: str = typer.Argument(..., help="the server's name, as macro tools list shows it")):
    """Stop offering an external MCP server's tools and forget the server."""
    from macro.tools.mcp_servers import forget

    removed = forget(name)
    typer.echo(f"removed MCP server {removed.name!r} ({removed.where}) and its {len(removed.tools)} tool(s)")
