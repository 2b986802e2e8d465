"""``macro ui``: the web UI (Gradio, the ``ui`` extra)."""

from __future__ import annotations

import typer

from macro.cli.common import PolicyOpt, app, err


@app.command()
def ui(
    policy: str = PolicyOpt,
    host: str = typer.Option("127.0.0.1", help="address to bind; 0.0.0.0 serves every network the machine is on"),
    port: int = typer.Option(7860, help="port to serve on"),
    open_browser: bool = typer.Option(False, "--open", help="open a browser tab"),
):
    """Chat about a scan in the browser: a slice viewer with the tools' overlays, threads, feedback."""
    from macro.ui.app import launch

    if host not in ("127.0.0.1", "localhost", "::1"):
        err(f"warning: serving on {host}: anyone who can reach this machine can open scans' threads and ask")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    err(f"MACRO UI on http://{shown}:{port} (policy {policy}); Ctrl+C stops")
    launch(policy, host, port, open_browser)
