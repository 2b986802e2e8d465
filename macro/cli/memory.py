"""``macro memory``: the image-feature memory of verified cases."""

from __future__ import annotations

import json
from typing import Optional

import typer

from macro.cli.common import ModalityOpt, err, group, load_scan
from macro.config import Home

memory = group("memory", "Image-feature memory of verified cases.")


@memory.command("stats")
def memory_stats(as_json: bool = typer.Option(False, "--json")):
    """Entries, dimension, index kind, file size, version and entries per task family."""
    from macro.memory.store import ImageMemory

    info = ImageMemory(Home.current().memory).stats()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    typer.echo(
        f"{info['path']}: {info['entries']} entries, dim {info['dim']}, {info['kind']} index, version "
        f"{info['version']}, {info['bytes']:,} bytes"
    )
    for family, count in sorted(info["families"].items()):
        typer.echo(f"  {family:<22} {count}")


@memory.command("query")
def memory_query(
    case: str = typer.Argument(
        ..., help="scan: file, DICOM/BraTS folder, or four comma-separated NIfTI (T1,T1ce,T2,FLAIR)"
    ),
    k: int = typer.Option(5, "--k"),
    floor: float = typer.Option(0.0, "--floor", help="lowest cosine similarity returned"),
    family: Optional[str] = typer.Option(None, "--family", help="only entries of this task family"),
    verified: bool = typer.Option(False, "--verified", help="only verified entries"),
    modality: Optional[str] = ModalityOpt,
    as_json: bool = typer.Option(False, "--json"),
):
    """The most similar remembered cases of a scan, with the tool chains that solved them."""
    from macro.memory.encoder import case_embedding
    from macro.memory.store import ImageMemory

    where = {**({"family": family} if family else {}), **({"verification": "verified"} if verified else {})}
    hits = ImageMemory(Home.current().memory).query(
        case_embedding(load_scan(case, modality)), k=k, floor=floor, where=where or None
    )
    if as_json:
        typer.echo(json.dumps([{"id": h.id, "score": round(h.score, 4), "meta": h.meta} for h in hits], indent=2))
        return
    for h in hits:
        tools = " -> ".join(t["name"] if isinstance(t, dict) else str(t) for t in h.meta.get("tools", []))
        typer.echo(
            f"{h.score:.3f}  {h.meta.get('case_id', h.id)}  [{h.meta.get('family')}, {h.meta.get('verification')}]  "
            f"{tools}"
        )
    if not hits:
        err("no remembered case above the floor")
