"""``macro train``: the policy adapter, the segmentation source model and the Step-CoT models. Each writes its
model's home copy under MACRO_HOME (used from then on in preference to the shipped one) unless ``--out`` names a
folder, e.g. the package's own to regenerate what ships."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from macro.cli.common import err, group, invocation, wrote
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
