"""``macro train``: the policy adapter, the segmentation source model and the Step-CoT models. Each writes its
model's home copy under MACRO_HOME (used from then on in preference to the shipped one) unless ``--out`` names a
folder, e.g. the package's own to regenerate what ships."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from macro.cli.common import app, err, group, invocation, wrote
from macro.config import Home

train = group("train", "Train the policy and the model-backed tools.")


OUT_HELP = (
    "weights folder (default: the home copy under MACRO_HOME, used from then on; "
    "give the package's own folder to regenerate what ships)"
)


@train.command("sft")
def train_sft_cmd(
    out: Optional[Path] = typer.Option(None, "--out", help=OUT_HELP),
    epochs: float = typer.Option(2.0),
    max_steps: int = typer.Option(-1, help="stop early (smoke runs)"),
    seed: int = typer.Option(0),
    eval_prompts: int = typer.Option(100, help="hand-written held-out requests scored after training (at most)"),
    base: Optional[Path] = typer.Option(None, help="base model folder (default: the converted embedded SmolLM2)"),
):
    """LoRA SFT cold start of the local policy on tool-use dialogues (PEFT; a case's rows packed behind their
    shared system turn)."""
    from macro.agent.local_llm import ADAPTER, embedded_base
    from macro.training.sft import SFTRecipe, train_sft, training_cases

    home = Home.current().ensure()
    recipe = SFTRecipe(seed=seed, epochs=epochs, max_steps=max_steps, eval_prompts=eval_prompts)
    cases = training_cases(home)
    target = ADAPTER.target(out, home)
    manifest = train_sft(target, recipe, base or embedded_base(home), cases, command=invocation())
    err(f"wrote {target}")
    typer.echo(json.dumps({k: manifest[k] for k in ("name", "sha256", "train", "held_out")}, indent=2))


@train.command("segmentation")
def train_segmentation_cmd(
    out: Optional[Path] = typer.Option(None, "--out", help=OUT_HELP),
    iterations: int = typer.Option(500),
    n_train: int = typer.Option(32),
    seed: int = typer.Option(0),
):
    """Train the source 3D UNet (ET/TC/WT) on source-domain brain phantoms; writes fp16 weights + manifest."""
    from macro.tools.segmentation.model import SLOT
    from macro.tools.segmentation.train import SegTrainConfig, train_segmentation

    home = Home.current().ensure()
    cfg = SegTrainConfig(iterations=iterations, n_train=n_train, seed=seed)
    target = SLOT.target(out, home)
    manifest = train_segmentation(target, cfg, home.data / "brats-phantom", command=invocation(), progress=True)
    err(f"wrote {target}")
    typer.echo(json.dumps({k: manifest[k] for k in ("sha256", "train", "held_out_source_dice")}, indent=2))


@train.command("vqa")
def train_vqa_cmd(
    out: Optional[Path] = typer.Option(None, "--out", help=OUT_HELP),
    quick: bool = typer.Option(False, "--quick", help="1 500 images and a shorter schedule (a smoke run)"),
    seed: int = typer.Option(0, help="phantom seed (the training seed is 42, as in the notes)"),
    report_dir: Path = typer.Option(Path("runs/vqa-train"), "--report", help="where the held-out report goes"),
):
    """Train the Step-CoT teacher and student on a seeded stepcot-phantom; writes fp16 weights + manifest."""
    from macro.eval.vqa import run, write_report
    from macro.tools.vqa.checkpoint import SLOT, ship

    home = Home.current().ensure()
    report, trained = run(home.data, quick=quick, seed=seed, log=err)
    target = SLOT.target(out, home)
    manifest = ship(target, trained, report, invocation())
    wrote([target, *write_report(report, report_dir)])
    typer.echo(json.dumps({"files": manifest["files"], "held_out": manifest["held_out"]}, indent=2))


@train.command("grpo")
def train_grpo_cmd(
    config: str = typer.Option("cpu-smoke", "--config", help="cpu-smoke, cpu-full, gpu-lora or gpu-multinode"),
    out: Optional[Path] = typer.Option(None, "--out", help=OUT_HELP),
    max_steps: Optional[int] = typer.Option(None, help="optimizer steps (default: the config's)"),
    seed: Optional[int] = typer.Option(None),
    base: Optional[str] = typer.Option(
        None, help="a transformers model folder to train with a fresh LoRA instead of the embedded SmolLM2 + SFT"
    ),
    eval_prompts: Optional[int] = typer.Option(
        None, help="hand-written held-out requests scored on the written adapter (default: the config's; 0: none)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
):
    """GRPO of the policy (TRL) on MACRO-Bench train tasks, with rollouts through the agent's own loop; continues
    the SFT adapter and writes the GRPO adapter (home copy unless --out). Resumes from the run folder's last
    checkpoint under MACRO_HOME/runs/grpo/CONFIG."""
    from macro.training.grpo import recipe, train_grpo

    home = Home.current().ensure()
    try:
        r = recipe(config, max_steps=max_steps, seed=seed, base_model=base, eval_prompts=eval_prompts)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--config") from None
    if not r.use_cpu:
        import torch

        if not torch.cuda.is_available():
            raise typer.BadParameter(f"{config} needs a GPU; on this machine use cpu-smoke or cpu-full", "--config")
    summary = train_grpo(r, home, out, command=invocation())
    err(f"wrote {summary['adapter']}")
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        first, last = summary["reward_first"], summary["reward_last"]
        typer.echo(
            f"{summary['steps']} steps in {summary['seconds']:.0f} s: mean reward {first} (first fifth) -> {last} "
            f"(last fifth); groups with equal rewards {summary['frac_zero_std']}; curve in {summary['run_dir']}"
        )


@train.command("score")
def train_score_cmd(
    adapter: Path = typer.Argument(..., help="a policy adapter folder (with its manifest)"),
    requests: int = typer.Option(100, min=1, help="hand-written held-out requests to score (at most)"),
    base: Optional[Path] = typer.Option(None, help="base model folder (default: the converted embedded SmolLM2)"),
):
    """Score a policy adapter already written on the hand-written held-out requests and record the figures in its
    manifest (adapters written before manifests carried them); its weights files and sha256 stay as they are."""
    from macro.agent.local_llm import ADAPTER, embedded_base
    from macro.tools.registry import Registry
    from macro.training.sft import rescore

    home = Home.current().ensure()
    manifest = rescore(adapter, base or embedded_base(home), Registry.default(), requests, ADAPTER.regenerate)
    err(f"wrote {adapter / 'manifest.json'}")
    typer.echo(json.dumps({k: manifest[k] for k in ("name", "sha256", "held_out")}, indent=2))


@app.command("evolve")
def evolve_cmd(
    rounds: int = typer.Option(1, "--rounds", min=1, help="rounds to run (finished ones are kept, not rerun)"),
    config: str = typer.Option("cpu-smoke", "--config", help="the GRPO config of each round's policy phase"),
    max_steps: Optional[int] = typer.Option(None, help="GRPO steps per round (default: the config's)"),
    families: Optional[str] = typer.Option(None, help="comma-separated task families (default: the config's)"),
    tasks_per_family: Optional[int] = typer.Option(None, help="train tasks per family and seed"),
    as_json: bool = typer.Option(False, "--json", help="print the rounds as JSON"),
):
    """Self-evolution rounds: the macro agent answers MACRO-Bench train tasks (experience and memory), composites
    are mined and admitted, then GRPO trains the policy on the grown tool set. Resumes a killed run in the phase it
    was in; rounds are logged in MACRO_HOME/runs/evolve/rounds.jsonl."""
    from macro.training.evolve import evolve
    from macro.training.grpo import recipe

    home = Home.current().ensure()
    chosen = tuple(f.strip() for f in families.split(",")) if families else None
    try:
        r = recipe(config, max_steps=max_steps, families=chosen, tasks_per_family=tasks_per_family)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    from tqdm import tqdm

    rows = evolve(rounds, r, home, log=err, progress=tqdm)
    typer.echo(json.dumps(rows, indent=2) if as_json else "\n".join(json.dumps(row) for row in rows))
