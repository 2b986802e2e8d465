"""``macro selftest``: the project checks itself where a user's data and machine are at stake."""

from __future__ import annotations

import json

import typer

from macro.cli.common import group

selftest = group("selftest", "Check the install: how MACRO behaves on bad input, kills, contention and runaway tools.")


@selftest.command("reliability")
def selftest_reliability(
    full: bool = typer.Option(False, "--full", help="the issue's counts (>= 200 inputs, 50 kills; ~15 min)"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Bad inputs / crashes, planted identifiers / leaks, escapes, kill -9 trials, concurrent writes, limits.

    Exit 1 when any suite finds a failure; each failure's first examples are in the report."""
    from tqdm import tqdm

    from macro.eval.reliability import KEYS, run

    with tqdm(total=len(KEYS), desc="selftest", unit="suite", disable=as_json) as bar:

        def progress(name: str) -> None:
            bar.set_postfix_str(name)
            bar.update(0 if bar.n == 0 and name == next(iter(KEYS)) else 1)

        report = run(full, progress)
        bar.update(bar.total - bar.n)
    failed = sum(report[name][KEYS[name][1]] for name in KEYS)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        for name, (tried, bad) in KEYS.items():
            entry = report[name]
            typer.echo(f"{name:12} {entry[tried]:4d} {tried:8} {entry[bad]:3d} {bad}")
            for example in entry["examples"]:
                typer.echo(f"{'':12} - {example}")
            for key, value in entry.items():
                if key not in (tried, bad, "examples"):
                    typer.echo(f"{'':12} {key}: {value}")
        typer.echo(f"{report['form']} form: {'all contained' if not failed else f'{failed} failure(s)'}")
    if failed:
        raise typer.Exit(1)
