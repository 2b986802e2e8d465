"""``macro data``: demo and phantom datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from macro.cli.common import group

data = group("data", "Demo and phantom data.")


@data.command("make")
def data_make(
    name: str = typer.Argument(..., help="dataset builder, e.g. brain-mri-demo"),
    out: Path = typer.Option(..., "--out"),
    n: Optional[int] = typer.Option(
        None, "--n", help="number of cases (default 1; anomaly-stream: training images per task, default 60)"
    ),
    seed: int = typer.Option(0, "--seed"),
    domain: Optional[str] = typer.Option(None, "--domain", help="brats-phantom only: source, lowfield or pediatric"),
):
    """Build a deterministic phantom dataset from real anatomy."""
    from macro.data import make

    options = {"domain": domain} if domain else {}
    if n is not None:
        options["n"] = n
    for folder in make(name, out, seed=seed, **options):
        typer.echo(str(folder))
