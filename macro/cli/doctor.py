"""``macro doctor`` and ``macro models``: what is installed, and which copy of each learnt model is in use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from macro.cli.common import app, group
from macro.config import Home


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json")):
    """What is installed, which policy backends and weights are available, where MACRO_HOME is."""
    from macro.eval.doctor import report

    info = report(Home.current())
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for section, values in info.items():
        typer.echo(f"{section}:")
        for key, value in values.items() if isinstance(values, dict) else [("", values)]:
            typer.echo(f"  {key:<22} {value}")


models = group("models", "Learnt models: which copy is in use (home or shipped), and whether it is intact.")


@models.command("list")
def models_list(as_json: bool = typer.Option(False, "--json")):
    """Every learnt model with the copy in use, its folder, version and state."""
    from macro.eval.doctor import models as model_rows

    rows = model_rows(Home.current())
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        state = f"sha256 {r['sha256']}" if r["problem"] is None else f"PROBLEM: {r['problem']}"
        typer.echo(f"{r['slot']:<28} {r['copy']:<8} {state}  {r['folder']}")


@models.command("verify")
def models_verify():
    """Check every model's files against their manifests; the first damaged one is named and the command exits 2."""
    from macro import weights
    from macro.eval.doctor import models as model_rows

    for r in model_rows(Home.current()):
        if r["problem"] is not None:
            weights.verify(Path(r["folder"]), r["regenerate"])  # raises the error the row describes
        typer.echo(f"{r['slot']}: ok ({r['copy']} copy, sha256 {r['sha256']})")


OOD_MODELS = ("classification/derm", "classification/cxr", "vqa")


@models.command("fit-ood")
def models_fit_ood(
    name: str = typer.Argument(..., help=" | ".join(OOD_MODELS)),
    out: Optional[Path] = typer.Option(None, "--out", help="weights folder (default: the model's home copy)"),
):
    """Fit a model's out-of-distribution check on its training images, weights unchanged (training fits it too)."""
    home = Home.current().ensure()
    if name == "vqa":
        from macro.tools.vqa.checkpoint import refit_ood as refit_vqa

        manifest = refit_vqa(home.data, out=out)
    elif name in OOD_MODELS:
        from macro.federated.run import refit_ood

        manifest = refit_ood(name.split("/")[1], home.data, out=out)
    else:
        raise typer.BadParameter(f"{name!r}: expected one of {', '.join(OOD_MODELS)}", param_hint="NAME")
    typer.echo(json.dumps({"sha256": manifest["sha256"], "ood": manifest["ood"]}, indent=2))
