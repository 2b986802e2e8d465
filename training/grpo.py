"""GRPO of the policy with TRL's ``GRPOTrainer``: one recipe dataclass, named presets, one ``train_grpo``.

The trainer continues the SFT adapter (LoRA) on MACRO-Bench train-split tasks (never its test splits), with
episodes from :class:`~macro.training.rollout.Rollouts` (the agent's own loop) and the rewards of
:mod:`~macro.training.rewards`, weighted by the recipe. What TRL's defaults get wrong here, measured on this
machine: ``learning_rate`` 1e-6 moves a LoRA nowhere in a smoke run, ``bf16`` resolves to True even on CPU, and a
format-only reward gives every group the same score (``frac_reward_zero_std`` 1, gradient exactly 0), hence the
outcome and process rewards, sampling at temperature 1 and the redrawing of zero-variance groups.

Presets (``macro train grpo --config NAME``): ``cpu-smoke`` (minutes on 2 cores, a CI-sized check that the reward
climbs), ``cpu-full`` (hours, in the background), ``gpu-lora`` (one GPU: bf16, vLLM colocated with the trainer,
tensor parallel 1 since SmolLM2 has 9 attention heads and 3 KV heads) and ``gpu-multinode`` (``accelerate launch``
with the DeepSpeed ZeRO-3 or FSDP2 file in ``training/accelerate/``). On GPU configs the rollouts sample with the
colocated vLLM engine, which each rank holds whole: under ZeRO-3 a forward pass of the training model is a
collective, so rollouts that sampled from it would hang as soon as two ranks made different numbers of calls.

A run keeps its checkpoints, ``metrics.jsonl`` (one line per logged step) and ``rewards.png`` in its run folder
(``MACRO_HOME/runs/grpo/<config>``) and resumes from the last checkpoint there; the adapter goes to the GRPO
adapter's home copy with a manifest (start adapter, recipe, seed, reward curve).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from macro import weights
from macro.agent.local_llm import ADAPTER, ADAPTER_FILE, GRPO_ADAPTER, attach_adapter, embedded_base, grpo_in_use
from macro.config import Home
from macro.eval.bench.tasks import FAMILIES, Task
from macro.skills.library import load_composites
from macro.tools.registry import Registry
from macro.training.rewards import REWARDS, total
from macro.training.rollout import Episode, Rollouts
from macro.training.sft import save_scored

ACCELERATE = Path(__file__).parent / "accelerate"
DEFAULT_WEIGHTS = {"outcome": 1.0, "tool_choice": 0.5, "efficiency": 0.25, "well_formed": 0.25, "composite_use": 0.5}


@dataclass
class GRPORecipe:
    """Every setting of a GRPO run (recorded in the manifest)."""

    name: str = "cpu-smoke"
    seed: int = 0
    max_steps: int = 12
    groups_per_step: int = 2  # tasks per optimizer step, each sampled num_generations times
    num_generations: int = 4
    temperature: float = 1.0
    learning_rate: float = 1e-4
    beta: float = 0.0  # no reference model (TRL's default): the LoRA starts at the SFT adapter and moves little
    loss_type: str = "dapo"
    max_new_tokens: int = 96  # per decision, as at run time
    redraws: int = 1  # reruns of a group whose episodes all score the same
    families: tuple[str, ...] = tuple(FAMILIES)
    task_seeds: tuple[int, ...] = (0,)
    tasks_per_family: int = 4
    reward_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    gradient_checkpointing: bool = True
    use_cpu: bool = True
    bf16: bool = False
    use_vllm: bool = False
    vllm_mode: str = "colocate"
    vllm_tensor_parallel_size: int = 1
    vllm_gpu_memory_utilization: float = 0.3
    base_model: str | None = None  # a transformers folder (a larger instruct model); None: the embedded SmolLM2
    start: str = "sft"  # the adapter the embedded SmolLM2 starts from: "sft", or "grpo" (the last GRPO adapter)
    lora_r: int = 8  # for a base model without the SFT adapter
    accelerate_config: str | None = None  # file in training/accelerate/, for `accelerate launch`
    save_steps: int = 4
    shuffle: bool = True  # False: tasks in order, so the first and the last steps see the same tasks
    eval_prompts: int = 100  # hand-written held-out requests scored on the written adapter (0: none)


FAST_FAMILIES = ("lesion-class", "cxr-finding", "anomaly-screen", "stepwise-dx", "findings-then-dx")  # no 3D tools

PRESETS: dict[str, GRPORecipe] = {
    "cpu-smoke": GRPORecipe(  # one task per step in a fixed cycle: the first and last fifth see the same tasks
        max_steps=25,
        groups_per_step=1,
        families=FAST_FAMILIES,
        tasks_per_family=1,
        temperature=1.2,
        learning_rate=2e-4,
        redraws=0,
        shuffle=False,
        save_steps=5,
        eval_prompts=30,
    ),
    "cpu-full": GRPORecipe(  # the shipped adapter's run: about half an hour on 2 cores
        name="cpu-full",
        max_steps=60,
        groups_per_step=1,
        families=FAST_FAMILIES,
        task_seeds=(0, 1),
        tasks_per_family=3,
        save_steps=10,
    ),
    "gpu-lora": GRPORecipe(
        name="gpu-lora",
        max_steps=200,
        groups_per_step=8,
        num_generations=8,
        task_seeds=(0, 1, 2, 3, 4),
        tasks_per_family=8,
        use_cpu=False,
        bf16=True,
        use_vllm=True,
        redraws=2,
        save_steps=25,
    ),
}
PRESETS["gpu-multinode"] = replace(  # several GPUs or nodes: `accelerate launch` with a file in training/accelerate/
    PRESETS["gpu-lora"],
    name="gpu-multinode",
    max_steps=400,
    groups_per_step=16,
    task_seeds=tuple(range(8)),
    accelerate_config="deepspeed_zero3.yaml",
)


def recipe(name: str, **overrides: Any) -> GRPORecipe:
    """A preset with the given settings changed (None keeps the preset's)."""
    if name not in PRESETS:
        raise ValueError(f"unknown GRPO config {name!r}; choose one of: {', '.join(PRESETS)}")
    r = replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
    unknown = [f for f in r.families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown task families {', '.join(unknown)}; choose from {', '.join(FAMILIES)}")
    return r


def grpo_config(r: GRPORecipe, run_dir: Path):
    """TRL's ``GRPOConfig`` for the recipe: one generation batch per optimizer step."""
    from trl import GRPOConfig

    batch = r.groups_per_step * r.num_generations
    extra = {}
    if r.use_vllm:
        extra = {
            "vllm_mode": r.vllm_mode,
            "vllm_tensor_parallel_size": r.vllm_tensor_parallel_size,
            "vllm_gpu_memory_utilization": r.vllm_gpu_memory_utilization,
        }
    return GRPOConfig(
        output_dir=str(run_dir),
        seed=r.seed,
        max_steps=r.max_steps,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_generations=r.num_generations,
        temperature=r.temperature,
        learning_rate=r.learning_rate,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=1,
        beta=r.beta,
        loss_type=r.loss_type,
        reward_weights=[r.reward_weights[name] for name in REWARDS],
        max_completion_length=4096,  # rollouts end themselves (step limit, tokens per decision)
        use_cpu=r.use_cpu,
        bf16=r.bf16,
        gradient_checkpointing=r.gradient_checkpointing,
        use_vllm=r.use_vllm,
        logging_steps=1,
        save_strategy="steps",
        save_steps=r.save_steps,
        save_total_limit=2,
        report_to="none",
        disable_tqdm=not sys.stderr.isatty(),
        shuffle_dataset=r.shuffle,
        **extra,
    )


def training_tasks(r: GRPORecipe, data: Path) -> list[Task]:
    """MACRO-Bench train-split tasks of the recipe's families and seeds (the test splits are never trained on)."""
    tasks = []
    for name in r.families:
        for seed in r.task_seeds:
            tasks += FAMILIES[name].build(data, "train", seed, r.tasks_per_family)
    return tasks


def base_folder(r: GRPORecipe, home: Home) -> Path:
    """The folder of the model the adapter sits on: ``base_model``, else the embedded SmolLM2 (converted once)."""
    return Path(r.base_model) if r.base_model else embedded_base(home)


def policy_model(r: GRPORecipe, home: Home):
    """(trainable PEFT model, tokenizer, what it started from): the embedded SmolLM2 with the active SFT adapter
    (or the GRPO one, ``start="grpo"``), or ``base_model`` with a fresh LoRA."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from macro.training.sft import LORA_TARGETS

    base = base_folder(r, home)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16 if r.bf16 else torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if r.base_model is None:
        slot = GRPO_ADAPTER if r.start == "grpo" and grpo_in_use(home) else ADAPTER
        folder = slot.active(home)
        manifest = weights.verify(folder, slot.regenerate)
        sft = manifest["sha256"] if slot is ADAPTER else manifest["start"]["sft_sha256"]
        start = {"adapter": slot.name, "sha256": manifest["sha256"], "sft_sha256": sft}
        return attach_adapter(model, folder, trainable=True), tokenizer, start
    lora = LoraConfig(r=r.lora_r, lora_alpha=2 * r.lora_r, target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM")
    return get_peft_model(model, lora), tokenizer, {"base_model": weights.portable(base), "adapter": None}


def build_trainer(r: GRPORecipe, run_dir: Path, home: Home, tasks: list[Task] | None = None):
    """The ``GRPOTrainer`` of a recipe with its rollouts (no training yet)."""
    import datasets
    from trl import GRPOTrainer

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is "experimental" in TRL 1.x
    tasks = tasks if tasks is not None else training_tasks(r, home.data / "grpo-tasks")
    model, tokenizer, start = policy_model(r, home)
    weights_ = dict(r.reward_weights)

    def score(episode: Episode) -> float:
        return total(weights_, episode.fields())

    rollouts = Rollouts(
        tasks,
        load_composites(Registry.default(), home),
        run_dir,
        score,
        temperature=r.temperature,
        max_new_tokens=r.max_new_tokens,
        redraws=r.redraws,
        seed=r.seed,
    )
    dataset = datasets.Dataset.from_dict({"prompt": [t.id for t in tasks]})
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=list(REWARDS.values()),
        args=grpo_config(r, run_dir),
        train_dataset=dataset,
        processing_class=tokenizer,
        rollout_func=rollouts,
    )
    trainer.add_callback(_metrics_callback(run_dir / "metrics.jsonl", rollouts))
    return trainer, rollouts, start


def _metrics_callback(path: Path, rollouts: Rollouts):
    from transformers import TrainerCallback

    class Metrics(TrainerCallback):
        """One JSON line per logged step, with the rollouts' redraw counts."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                row = {"step": state.global_step, **logs, "groups": rollouts.groups, "redrawn": rollouts.redrawn}
                with path.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")

    return Metrics()


def summarise(rows: list[dict]) -> dict:
    """Reward of the first and last fifth of the steps, the zero-variance share and each reward's mean."""
    rewards = [row["reward"] for row in rows]
    k = max(1, len(rewards) // 5)
    out = {
        "steps": len(rows),
        "reward_first": round(sum(rewards[:k]) / k, 4) if rewards else None,
        "reward_last": round(sum(rewards[-k:]) / k, 4) if rewards else None,
        "frac_zero_std": round(sum(r.get("frac_reward_zero_std", 0.0) for r in rows) / len(rows), 4) if rows else None,
    }
    for name in REWARDS:
        values = [row[f"rewards/{name}/mean"] for row in rows if row.get(f"rewards/{name}/mean") is not None]
        values = [v for v in values if v == v]  # NaN: no episode of the step was scored by it
        out[f"{name}_mean"] = round(sum(values) / len(values), 4) if values else None
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [row["step"] for row in rows]
    ax.plot(steps, [row["reward"] for row in rows], label="total", linewidth=2)
    for name in REWARDS:
        key = f"rewards/{name}/mean"
        if any(row.get(key) == row.get(key) and row.get(key) is not None for row in rows):
            ax.plot(steps, [row.get(key) for row in rows], label=name, linewidth=1, alpha=0.7)
    ax.set_xlabel("step")
    ax.set_ylabel("mean reward")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def read_metrics(path: Path) -> list[dict]:
    """Logged steps, the last line per step (a resumed run logs a step again)."""
    rows: dict[int, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            rows[row["step"]] = row
    return [rows[k] for k in sorted(rows)]


def train_grpo(r: GRPORecipe, home: Home, out: Path | None = None, command: str = "macro train grpo") -> dict:
    """Train (resuming from the run folder's last checkpoint), write the adapter and its manifest, return a
    summary with the reward curve's figures."""
    from peft import get_peft_model_state_dict
    from transformers import set_seed

    set_seed(r.seed)
    run_dir = home.root / "runs" / "grpo" / r.name
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer, rollouts, start = build_trainer(r, run_dir, home)
    resume = any(run_dir.glob("checkpoint-*"))
    began = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the trainer prints its logs; stdout stays for the summary
        trainer.train(resume_from_checkpoint=True if resume else None)
    seconds = time.perf_counter() - began
    rows = read_metrics(run_dir / "metrics.jsonl")
    if rows:
        plot(rows, run_dir / "rewards.png")
    summary = {"config": r.name, "seconds": round(seconds, 1), "resumed": resume, **summarise(rows)}
    summary["episodes"] = rollouts.episodes
    model = trainer.accelerator.unwrap_model(trainer.model)
    config = json.loads(json.dumps(model.peft_config["default"].to_dict(), default=list))
    config["base_model_name_or_path"] = "SmolLM2-135M-Instruct" if r.base_model is None else r.base_model
    manifest = {
        "name": GRPO_ADAPTER.name.split("/")[-1],
        "kind": "lora-adapter",
        "base_model": config["base_model_name_or_path"],
        "lora": config,
        "command": command,
        "seed": r.seed,
        "start": start,
        "recipe": asdict(r),
        "data": {"tasks": "MACRO-Bench train split", "families": list(r.families), "seeds": list(r.task_seeds)},
        "train": summary,
        "reward_curve": [{"step": row["step"], "reward": round(row["reward"], 4)} for row in rows],
    }
    target = GRPO_ADAPTER.target(out, home)
    base = base_folder(r, home)
    state = {ADAPTER_FILE: get_peft_model_state_dict(model)}
    save_scored(target, state, manifest, base, rollouts.registry, r.eval_prompts)
    summary["held_out"] = manifest.get("held_out")
    summary["adapter"] = str(target)
    summary["run_dir"] = str(run_dir)
    return summary
