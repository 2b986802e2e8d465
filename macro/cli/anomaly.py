"""``macro anomaly``: the continual anomaly bank (CADIC), learnt task by task."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from macro.cli.common import group, invocation
from macro.errors import CaseError

anomaly = group("anomaly", "Continual anomaly detection (CADIC): one shared memory bank, learnt task by task.")


@anomaly.command("learn")
def anomaly_learn(
    task: list[Path] = typer.Option(
        [], "--task", help="MVTec-layout task folder (train/good, ...); repeat to learn several in order"
    ),
    stream: Optional[Path] = typer.Option(None, "--stream", help="learn every task of an anomaly stream, in its order"),
    bank: Optional[Path] = typer.Option(None, "--bank", help="bank folder (default: MACRO_HOME/models/anomaly)"),
    reset: bool = typer.Option(False, "--reset", help="start an empty bank instead of extending the current one"),
    capacity: Optional[int] = typer.Option(
        None, help="vectors in a new bank (default: the first task's coreset, 25 % of its patches)"
    ),
    seed: int = typer.Option(0),
):
    """Add tasks to the shared CADIC bank (k-center over bank + new coreset, fixed size); recalibrates the threshold."""
    from tqdm import tqdm

    from macro.artifacts import locked
    from macro.data.anomaly import stream_tasks
    from macro.tools.anomaly.bank import SLOT, load_bank, save_bank
    from macro.tools.anomaly.learn import empty_bank, learn
    from macro.weights import MANIFEST

    folders = [*task, *(stream_tasks(stream) if stream else [])]
    if not folders:
        raise CaseError(None, "give --task DIR (repeatable) or --stream DIR")
    target = SLOT.target(bank)
    with locked(target), tqdm(desc="anomaly: images and k-center steps", file=sys.stderr, mininterval=5) as bar:
        start_from = target if (target / MANIFEST).is_file() else SLOT.active()
        current = empty_bank(seed) if reset else load_bank(start_from)
        learnt, _ = learn(current, folders, capacity, command=invocation(), progress=bar.update)
        manifest = save_bank(learnt, target)
    typer.echo(
        json.dumps(
            {k: manifest[k] for k in ("sha256", "size", "capacity", "megabytes", "threshold", "held_out")}
            | {"tasks": [t["name"] for t in manifest["tasks"]], "bank": str(target)},
            indent=2,
        )
    )


@anomaly.command("info")
def anomaly_info(as_json: bool = typer.Option(False, "--json")):
    """The active bank: where it is, its tasks, size, threshold and held-out metrics."""
    from macro import weights
    from macro.tools.anomaly.bank import SLOT

    folder = SLOT.active()
    manifest = weights.verify(folder, SLOT.regenerate)
    if as_json:
        typer.echo(json.dumps({"bank": str(folder), **manifest}, indent=2))
        return
    typer.echo(
        f"bank {folder}: {manifest['size']}/{manifest['capacity']} vectors, {manifest['megabytes']} MB, "
        f"threshold {manifest['threshold']['value']} (q{manifest['threshold']['quantile']})"
    )
    for t in manifest["tasks"]:
        metrics = manifest.get("held_out", {}).get(t["name"], {})
        typer.echo(f"  {t['name']:<16} {t['modality']:<10} image AUROC {metrics.get('image_auroc', '-')}")
