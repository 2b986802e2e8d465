"""``macro mcp``: MACRO's tools served to any MCP client (docs/mcp.md)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from macro.cli.common import err, group

mcp = group("mcp", "Serve MACRO's tools over the Model Context Protocol.")


@mcp.command("serve")
def mcp_serve(
    http: Optional[int] = typer.Option(None, "--http", help="serve streamable HTTP on this port (default: stdio)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind with --http"),
    root: List[Path] = typer.Option(
        [], "--root", help="a folder scans may be read from (repeatable; default: the current folder)"
    ),
):
    """Serve every registered tool over MCP: stdio for desktop clients, or streamable HTTP with --http PORT."""
    from macro.mcp_server.server import MacroServer
    from macro.mcp_server.transport import serve_http, serve_stdio

    roots = root or [Path.cwd()]
    for folder in roots:
        if not folder.expanduser().is_dir():
            raise typer.BadParameter(f"{folder} is not a folder", param_hint="--root")
    if http is not None and not 0 < http < 65536:
        raise typer.BadParameter(f"{http} is not a port number", param_hint="--http")

    def build():
        server = MacroServer(roots)
        for problem in server.registry.problems:
            err(f"plug-in skipped: {problem}")
        err(f"serving {len(server.tools)} tools; scans are read under {', '.join(map(str, server.roots))}")
        return server.server

    if http is None:
        serve_stdio(build)
    else:
        serve_http(build, host, http, err)
