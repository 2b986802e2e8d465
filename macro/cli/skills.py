"""``macro skills``: composite tools mined from verified trajectories."""

from __future__ import annotations

import json

import typer

from macro.cli.common import err, group
from macro.config import Home
from macro.errors import CaseError

skills = group("skills", "Composite tools mined from verified trajectories.")


def _parts():
    from macro.skills.evolve import executor_replay
    from macro.skills.library import Library
    from macro.tools.registry import Registry
    from macro.trajectory import TrajectoryStore

    home = Home.current().ensure()
    trajectories = [
        t.to_dict() for t in TrajectoryStore(home.trajectories_db).list(verification=("verified", "failed"))
    ]
    replay = executor_replay(Registry.default, home.artifacts)
    return home, Library(home.skills / "library"), trajectories, replay


def _row(comp) -> dict:
    prov = comp.provenance
    return {
        "name": comp.name,
        "tools": list(comp.tools),
        "params": {k: v.get("default") for k, v in comp.params.items()},
        "support": prov.get("support"),
        "reliability": prov.get("reliability"),
        "score": prov.get("score"),
        "round": prov.get("round"),
        "verification": comp.verification,
        "usage": prov.get("usage"),
    }


@skills.command("mine")
def skills_mine(
    min_support: int = typer.Option(5, help="verified runs that must contain a chain"),
    as_json: bool = typer.Option(False, "--json"),
):
    """One evolution round: mine candidates, admit those whose replay reproduces the recorded results, prune."""
    from macro.skills.evolve import EvolveConfig, evolve
    from macro.skills.mine import MineConfig

    _, library, trajectories, replay = _parts()
    report = evolve(trajectories, library, replay, EvolveConfig(mine=MineConfig(min_support=min_support)), progress=err)
    typer.echo(
        json.dumps(report, indent=2)
        if as_json
        else report["note"] + f"; library round {report['round']}: {', '.join(report['library']) or 'empty'}"
    )


@skills.command("list")
def skills_list(as_json: bool = typer.Option(False, "--json")):
    """The current library round's composites."""
    _, library, _, _ = _parts()
    current = library.current()
    rows = [_row(c) for c in current.composites]
    if as_json:
        typer.echo(json.dumps({"round": current.number, "composites": rows, "problems": library.problems}, indent=2))
        return
    typer.echo(f"library round {current.number}: {len(rows)} composite(s)")
    for r in rows:
        typer.echo(
            f"  {r['name']:<32} {' -> '.join(r['tools'])}  support {r['support']}, reliability {r['reliability']}"
        )


@skills.command("show")
def skills_show(
    name: str = typer.Argument(...),
    as_json: bool = typer.Option(True, "--json", help="always JSON; accepted for symmetry"),
):
    """A composite's full definition (steps, bindings, parameters, provenance, verification) as JSON."""
    _, library, _, _ = _parts()
    try:
        typer.echo(json.dumps(library.current().get(name).to_dict(), indent=2))
    except KeyError as exc:
        raise CaseError(None, exc.args[0]) from None


@skills.command("verify")
def skills_verify(as_json: bool = typer.Option(False, "--json")):
    """Replay every composite of the current round on recorded verified runs; reports, changes nothing."""
    from macro.skills.evolve import replay_all

    _, library, trajectories, replay = _parts()
    report = replay_all(library, trajectories, replay)
    typer.echo(
        json.dumps(report, indent=2)
        if as_json
        else "\n".join(f"{k}: {v['reproduced']}/{v['replayed']} reproduced" for k, v in report.items())
    )


@skills.command("prune")
def skills_prune(as_json: bool = typer.Option(False, "--json")):
    """Drop composites whose runs are too often judged wrong; commits a new round if anything goes."""
    from macro.skills.evolve import prune_round

    _, library, trajectories, _ = _parts()
    report = prune_round(trajectories, library)
    typer.echo(
        json.dumps(report, indent=2)
        if as_json
        else f"round {report['round']}; pruned: {', '.join(report['pruned']) or 'nothing'}"
    )
