"""``macro runs``: the artifact store (masks, heatmaps, renders and resampled volumes of every turn)."""

from __future__ import annotations

import json
from typing import Optional

import typer

from macro.cli.common import group
from macro.config import Home
from macro.errors import CaseError

runs = group("runs", "The artifact store: what it holds and how to free it.")


@runs.command("gc")
def runs_gc(
    older_than: Optional[float] = typer.Option(None, "--older-than", help="remove runs older than this many days"),
    max_gb: Optional[float] = typer.Option(None, "--max-gb", help="then remove the oldest runs until the store fits"),
    dry_run: bool = typer.Option(False, "--dry-run", help="only report what would go"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Free the artifact store: old runs, a size quota, and temporary files left by killed writers."""
    from macro.artifacts import collect

    if older_than is not None and older_than < 0 or max_gb is not None and max_gb < 0:
        raise CaseError(None, "--older-than and --max-gb must not be negative")
    home = Home.current().ensure()
    quota = None if max_gb is None else int(max_gb * 2**30)
    report = collect(home.artifacts, older_than, quota, dry_run)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    verb = "would remove" if dry_run else "removed"
    typer.echo(
        f"{report['root']}: {verb} {report['runs_removed']} run(s), {report['bytes_freed'] / 2**20:.1f} MB, and "
        f"{report['tmp_removed']} stale temporary file(s); {report['runs_kept']} run(s), "
        f"{report['bytes_kept'] / 2**20:.1f} MB kept"
    )
