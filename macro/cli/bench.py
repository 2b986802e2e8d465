"""``macro bench``: MACRO-Bench and its ablations."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from macro.cli.common import app, err, parse_seeds, publish
from macro.errors import CaseError


@app.command()
def bench(
    suite: str = typer.Option("quick", help="quick | full"),
    agents: str = typer.Option(
        ",".join(("static", "react", "react+memory", "react+composites", "react+memory+composites", "macro")),
        help="comma-separated: static, react[+memory][+composites], macro, openai:URL, hf:PATH",
    ),
    llm: Optional[str] = typer.Option(
        None,
        help="the LLM every agent uses: embedded | scripted | hf:PATH | openai:URL "
        "(default: scripted for quick, embedded for full)",
    ),
    families: Optional[str] = typer.Option(
        None, help="comma-separated task families (default: all with their tools registered)"
    ),
    seeds: Optional[str] = typer.Option(None, help="comma-separated seeds (default: the suite's)"),
    n_eval: Optional[int] = typer.Option(None, "--n-eval", help="tasks per family, split and seed"),
    n_train: Optional[int] = typer.Option(None, "--n-train", help="train tasks per family and seed (experience)"),
    workers: int = typer.Option(1, help="parallel worker processes (each loads its own LLM)"),
    grpo_adapter: Optional[Path] = typer.Option(
        None,
        "--grpo-adapter",
        help="LoRA adapter from GRPO training, for the 'macro' agent (default with the embedded LLM: the one in use)",
    ),
    out: Path = typer.Option(
        Path("runs/bench"), "--out", help="results, report and the benchmark's own home (resumable)"
    ),
    as_json: bool = typer.Option(False, "--json"),
):
    """MACRO-Bench: static chain vs zero-shot ReAct vs + memory / + composites / full MACRO, held-out and OOD."""
    from tqdm import tqdm

    from macro.eval.bench.report import markdown, write_report
    from macro.eval.bench.run import BenchConfig, run_bench
    from macro.eval.bench.tasks import FAMILIES

    chosen = tuple(families.split(",")) if families else None
    if chosen and (unknown := [f for f in chosen if f not in FAMILIES]):
        raise CaseError(None, f"unknown task families {unknown}", accepted=", ".join(FAMILIES))
    cfg = BenchConfig.for_suite(
        suite,
        families=chosen,
        llm=llm,
        workers=workers,
        n_eval=n_eval,
        n_train=n_train,
        seeds=parse_seeds(seeds) if seeds else None,
    )
    if grpo_adapter is None and cfg.llm == "embedded":  # the GRPO adapter belongs to the embedded LLM
        from macro.agent.local_llm import grpo_in_use

        grpo_adapter = grpo_in_use()
    # The phantom scans live under OUT: stored relative to it, workers' runs can be replayed when mining.
    os.environ["MACRO_CASE_ROOT"] = str(out.resolve())
    try:
        report = run_bench(
            cfg,
            out,
            agents.split(","),
            str(grpo_adapter) if grpo_adapter else None,
            log=err,
            progress=lambda **kw: tqdm(file=sys.stderr, **kw),
        )
    except ValueError as exc:
        raise CaseError(None, str(exc)) from None
    publish(report, out, as_json, write_report, markdown)
