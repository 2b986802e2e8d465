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
    from macro.tools.registry import Registry, kind
    from macro.weights import SLOTS

    registry = load_composites(Registry.default())
    tools = registry.for_case(load_scan(case, None)) if case else registry.all()
    untrained = untrained_tools(registry)
    rows = [
        {
            "name": t.name,
            "kind": kind(t),
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
            f"{r['name']:<20} {r['kind']:<9} {r['version']:<7} {','.join(r['modalities']):<28} {r['description']}"
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
