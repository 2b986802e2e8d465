"""``macro fl``: federated classifiers, trained with FedLSM and a site forgotten with FCU. Both write the task's home
copy under MACRO_HOME unless ``--out`` names a folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from macro.cli.common import err, group, invocation
from macro.config import Home

fl = group("fl", "Federated classifiers: train (FedLSM) and forget a site (FCU).")


@fl.command("train")
def fl_train(
    task: str = typer.Option(..., "--task", help="derm | cxr"),
    method: str = typer.Option("fedlsm", help="fedlsm | fedavg | fedavg_labelled | pl | pl_ude"),
    rounds: int = typer.Option(50),
    n_images: Optional[int] = typer.Option(None, "--n-images"),
    seed: int = typer.Option(0),
    out: Optional[Path] = typer.Option(None, "--out", help="weights folder (default: the task's home copy)"),
):
    """Train a task's classifier across its sites (each labels only some classes); writes fp16 weights + manifest."""
    from macro.federated.run import train_task

    home = Home.current().ensure()
    manifest = train_task(task, home.data, out, method, rounds, n_images, seed, command=invocation())
    typer.echo(
        json.dumps({k: manifest[k] for k in ("sha256", "train", "held_out", "temperature", "test_ece")}, indent=2)
    )


@fl.command("unlearn")
def fl_unlearn(
    task: str = typer.Option("derm", "--task", help="derm | cxr"),
    client: int = typer.Option(..., "--client", help="site to forget"),
    requested_by: Optional[str] = typer.Option(None, "--requested-by", help="who asked (default: current user)"),
    out: Optional[Path] = typer.Option(None, "--out", help="where the new weights go (default: the task's home copy)"),
):
    """Forget one site's contribution with FCU, without retraining; appends an audit record."""
    from macro.federated.run import unlearn_task

    home = Home.current().ensure()
    record = unlearn_task(task, client, home.data, out=out, requested_by=requested_by)
    typer.echo(json.dumps(record, indent=2))


@fl.command("audit")
def fl_audit(as_json: bool = typer.Option(False, "--json")):
    """Check the unlearning audit log's hash chain: every entry intact and in order (exit 2 when it is broken)."""
    from macro.federated.run import check_audit

    Home.current().ensure()
    report = check_audit()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        typer.echo(f"{report['path']}: {report['entries']} entries, " + ("chain intact" if report["ok"] else "BROKEN"))
        for problem in report["problems"]:
            err(problem)
    if not report["ok"]:
        raise typer.Exit(2)
