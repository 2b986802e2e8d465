"""GRPO (issue 17): rollouts through the agent's own loop, rewards as plain functions, the zero-variance guard, exact
sampling with lookup drafts, and the trainer of every config."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from macro.config import Home
from macro.eval.bench.tasks import FAMILIES, Task
from macro.training import rewards
from macro.training.grpo import ACCELERATE, PRESETS, build_trainer, grpo_config, recipe, summarise
from macro.training.rollout import Episode, Rollouts


def fields(**overrides) -> dict:
    base = {
        "verdict": True,
        "format_errors": [],
        "steps": [{"tool": "classify_lesion", "args": {}, "ok": True, "error": None}],
        "expected": [{"name": "classify_lesion", "args": {}}],
        "stopped": "",
        "composites": [],
    }
    return base | overrides


def score(**overrides) -> dict:
    one = fields(**overrides)
    return {name: f([None], **{k: [v] for k, v in one.items()})[0] for name, f in rewards.REWARDS.items()}


def test_each_reward_scores_what_it_names():
    assert score() == {"outcome": 1.0, "well_formed": 1.0, "tool_choice": 1.0, "efficiency": 1.0, "composite_use": None}
    assert score(verdict=False)["outcome"] == 0.0
    assert score(format_errors=["bad json"])["well_formed"] == 0.5
    wrong = [{"tool": "describe_scan", "args": {}, "ok": True, "error": None}]
    assert score(steps=wrong)["tool_choice"] == 0.0
    failed = [{"tool": "classify_lesion", "args": {}, "ok": False, "error": "boom"}]
    assert score(steps=failed)["efficiency"] == 0.5
    extra = fields()["steps"] * 3
    assert score(steps=extra, stopped="the policy asked to repeat a call")["efficiency"] == 0.0
    used = [{"tool": "segment_then_measure", "args": {}, "ok": True, "error": None}]
    assert score(steps=used, composites=["segment_then_measure"])["composite_use"] == 1.0
    assert score(composites=["segment_then_measure"])["composite_use"] == 0.0
    weights = {"outcome": 1.0, "efficiency": 0.5, "composite_use": 1.0}
    assert rewards.total(weights, fields(verdict=False, steps=failed)) == 0.25  # an unscored reward adds nothing


def _task(k: int) -> Task:
    return Task(f"lesion-class/train/0/{k}", "lesion-class", "train", ["x.png"], "What is it?", {}, [])


def test_a_group_whose_episodes_all_score_the_same_is_redrawn_on_the_least_certain_task(tmp_path):
    tasks = [_task(k) for k in range(3)]
    rollouts = Rollouts(tasks, registry=None, work=tmp_path, score=lambda e: float(e.verdict), redraws=2)
    rollouts.outcomes = {tasks[1].id: [5, 10], tasks[2].id: [10, 10]}  # task 1 is the coin flip
    ran = []

    def episode(sample, tokenizer, task, memo):
        ran.append(task.id)
        mixed = task.id == tasks[1].id and len(ran) % 2 == 0
        return Episode(task, [1], verdict=mixed)

    rollouts.episode = episode
    group = rollouts.group(None, None, tasks[0], 4)
    assert [e.task.id for e in group] == [tasks[1].id] * 4  # task 0 gave four equal scores: redrawn once
    assert {e.verdict for e in group} == {True, False}
    assert rollouts.redrawn == 1 and rollouts.outcomes[tasks[0].id] == [0, 4]
    rollouts.episode = lambda sample, tokenizer, task, memo: Episode(task, [1])
    assert len(rollouts.group(None, None, tasks[2], 4)) == 4 and rollouts.redrawn == 3  # gives up after two


class _Soft:
    """A scripted model with a fixed next-token distribution after every token: 0.5 / 0.3 / 0.2 over 3, 4, 5."""

    def __call__(self, input_ids, cache, use_cache, logits_to_keep):
        import torch

        n = input_ids.shape[1]
        cache.length += n
        row = torch.full((32,), -1e9)
        row[3], row[4], row[5] = map(torch.log, torch.tensor([0.5, 0.3, 0.2]))
        return type("Out", (), {"logits": row.repeat(n, 1)[-logits_to_keep:].unsqueeze(0)})()


class _Cache:
    def __init__(self):
        self.length = 0

    def get_seq_length(self):
        return self.length

    def crop(self, n):
        self.length += n if n < 0 else 0


def test_sampling_with_lookup_drafts_keeps_the_models_distribution():
    """The prompt ends with 1 2 7, which it held before followed by 5, so the lookup drafts 5 first; exact
    speculative sampling must still give P(5) = 0.2 and P(3) = 0.5, not the draft's certainty."""
    import torch

    from macro.agent.local_llm import decode, sampler

    prompt = torch.tensor([[1, 2, 7, 5, 9, 1, 2, 7]])
    counts = {True: Counter(), False: Counter()}
    generator = torch.Generator().manual_seed(0)
    for lookup in (True, False):
        for _ in range(1500):
            tokens, _ = decode(_Soft(), prompt, _Cache(), eos=0, limit=3, lookup=lookup, pick=sampler(1.0, generator))
            counts[lookup][tokens[0]] += 1
    for lookup, seen in counts.items():
        assert abs(seen[5] / 1500 - 0.2) < 0.04 and abs(seen[3] / 1500 - 0.5) < 0.05, (lookup, seen)


def test_every_config_builds_its_trainer_and_the_gpu_settings_are_the_documented_ones(tiny_model, home, model_home):
    """Each preset's ``GRPOTrainer`` is built on a tiny model (GPU presets with their GPU-only switches off, since
    this machine has none); the GPU presets' own settings are checked as documented: bf16, vLLM colocated with tensor
    parallel 1 (SmolLM2's 9 heads and 3 KV heads allow 1 or 3), and ZeRO-3 / FSDP2 files for `accelerate launch`."""
    smol = json.loads((model_home.models / "smollm2-135m-instruct" / "config.json").read_text())
    task = _task(0)
    for name, preset in PRESETS.items():
        r = recipe(name, base_model=str(tiny_model))
        assert r.temperature >= 1.0 and r.learning_rate > 1e-6 and r.beta == 0.0
        if preset.use_cpu:
            assert not r.bf16 and r.gradient_checkpointing and not r.use_vllm
        else:
            assert r.bf16 and r.use_vllm and r.vllm_mode == "colocate" and r.vllm_tensor_parallel_size == 1
            assert smol["num_attention_heads"] % r.vllm_tensor_parallel_size == 0
            assert smol["num_key_value_heads"] % r.vllm_tensor_parallel_size == 0
            args = grpo_config(replace(r, use_cpu=True, bf16=False), Path(home) / name)
            assert args.use_vllm and args.vllm_mode == "colocate" and args.vllm_tensor_parallel_size == 1
            r = replace(r, use_cpu=True, bf16=False, use_vllm=False)
        trainer, rollouts, start = build_trainer(r, Path(home) / name, Home(Path(home)), tasks=[task])
        assert trainer.args.use_cpu and not trainer.args.bf16
        assert trainer.num_generations == r.num_generations
        assert trainer.args.per_device_train_batch_size == r.groups_per_step * r.num_generations
        assert trainer.rollout_func is rollouts and start["adapter"] is None
        assert trainer.reward_func_names == list(rewards.REWARDS)
        assert any(p.requires_grad for p in trainer.model.parameters())
    zero3 = yaml.safe_load((ACCELERATE / "deepspeed_zero3.yaml").read_text())
    assert zero3["distributed_type"] == "DEEPSPEED" and zero3["deepspeed_config"]["zero_stage"] == 3
    fsdp = yaml.safe_load((ACCELERATE / "fsdp2.yaml").read_text())
    assert fsdp["distributed_type"] == "FSDP" and fsdp["fsdp_config"]["fsdp_version"] == 2
    assert PRESETS["gpu-multinode"].accelerate_config == "deepspeed_zero3.yaml"


def test_the_summary_compares_the_first_and_last_fifth():
    rows = [{"step": i, "reward": r, "frac_reward_zero_std": z} for i, (r, z) in enumerate([(0, 1), (1, 0)] * 5)]
    rows[-1]["reward"] = 3.0
    out = summarise(rows)
    assert out["reward_first"] == 0.5 and out["reward_last"] == 1.5 and out["frac_zero_std"] == 0.5


@pytest.mark.slow
def test_a_rollout_is_the_agents_turn_with_tool_turns_masked(tmp_path, model_home, monkeypatch):
    """The shipped SFT adapter, sampled on a real train task: the sequence is the prompt, then the policy's replies
    (trained) and the tool turns (masked), ending at the policy's end of turn; the steps are real tool calls and the
    verdict is the family checker's on the agent's own final answer."""
    monkeypatch.setenv("MACRO_HOME", str(model_home.root))
    r = recipe("cpu-smoke", families=("lesion-class",), tasks_per_family=1, redraws=0)
    task = FAMILIES["lesion-class"].build(tmp_path / "data", "train", 0, 1)[0]
    trainer, rollouts, start = build_trainer(r, tmp_path / "run", model_home, tasks=[task])
    assert start["adapter"] == "policy/smollm2-tools-lora"
    out = rollouts([task.id] * 2, trainer)
    tokenizer = trainer.processing_class
    eos = tokenizer.eos_token_id
    for ids, mask, steps, answer in zip(out["completion_ids"], out["env_mask"], out["steps"], out["answer"]):
        assert len(ids) == len(mask) and ids[-1] == eos and mask[-1] == 1
        masked = tokenizer.decode([t for t, m in zip(ids, mask) if m == 0])
        assert masked.count("<|im_start|>tool") == len(steps)  # every call's result, and nothing the policy said
        assert all(tokenizer.decode([t]) != "<|im_start|>" for t, m in zip(ids, mask) if m == 1)
        assert answer.splitlines()[0]
    assert out["verdict"] == [FAMILIES["lesion-class"].check(task, a) for a in out["answer"]]
    assert trainer.model.training  # rollouts leave the model as they found it


@pytest.mark.slow
def test_evolve_runs_two_rounds_end_to_end_and_resumes_without_redoing_them(tmp_path, model_home, monkeypatch):
    """CI-sized rounds (one family, two tasks, one GRPO step of two episodes): experience is recorded and
    remembered, the library is mined, GRPO writes the adapter the next round's agent uses, and a second call
    reads the finished rounds back instead of running them again."""
    from macro.agent.local_llm import BASE_NAME, GRPO_ADAPTER
    from macro.training.evolve import evolve

    root = tmp_path / "home"
    (root / "models").mkdir(parents=True)
    (root / "models" / BASE_NAME).symlink_to(model_home.models / BASE_NAME)
    monkeypatch.setenv("MACRO_HOME", str(root))
    home = Home(root).ensure()
    r = recipe("cpu-smoke", max_steps=1, groups_per_step=1, num_generations=2, redraws=0)
    r = replace(r, families=("lesion-class",), tasks_per_family=2)
    rows = evolve(2, r, home, log=lambda line: None)
    assert [row["round"] for row in rows] == [1, 2]
    for row in rows:
        assert row["registry_size"] >= 9 and 0.0 <= row["success"] <= 1.0 and row["grpo"]["steps"] == 1
    manifest = json.loads((GRPO_ADAPTER.home_dir(home) / "manifest.json").read_text())
    assert manifest["start"]["adapter"] == GRPO_ADAPTER.name  # round 2 continued round 1's adapter
    experience = (root / "runs" / "evolve" / "round-2" / "experience.jsonl").read_text().splitlines()
    assert len(experience) == 2 and all(json.loads(line)["agent"] == "macro" for line in experience)
    assert evolve(2, r, home, log=lambda line: None) == rows


@pytest.mark.slow
def test_train_grpo_cli_writes_the_adapter_the_embedded_policy_then_uses(tmp_path, model_home, monkeypatch):
    """A CI-sized `macro train grpo --config cpu-smoke` (2 steps): the JSON has the reward figures, the run folder
    its metrics and curve, the home gets the adapter with a manifest naming the SFT adapter it continues, and the
    embedded policy uses it from then on (`embedded:sft` keeps the SFT one)."""
    from typer.testing import CliRunner

    from macro.agent.local_llm import ADAPTER, BASE_NAME, GRPO_ADAPTER
    from macro.agent.policy import make_policy
    from macro.cli import app

    root = tmp_path / "home"
    (root / "models").mkdir(parents=True)
    (root / "models" / BASE_NAME).symlink_to(model_home.models / BASE_NAME)
    monkeypatch.setenv("MACRO_HOME", str(root))
    argv = ["train", "grpo", "--config", "cpu-smoke", "--max-steps", "2", "--eval-prompts", "4", "--json"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["steps"] == 2 and summary["episodes"] >= 8
    assert {"reward_first", "reward_last", "frac_zero_std"} <= set(summary)
    run = Path(summary["run_dir"])
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2 and (run / "rewards.png").stat().st_size > 0
    manifest = json.loads((GRPO_ADAPTER.home_dir() / "manifest.json").read_text())
    sft = json.loads((ADAPTER.active() / "manifest.json").read_text())["sha256"]
    assert manifest["start"]["sft_sha256"] == sft and manifest["command"].startswith("macro train grpo")
    assert manifest["held_out"]["n"] == 4 and manifest["held_out"] == summary["held_out"]  # scored as SFT adapters are
    assert make_policy("embedded")[1].startswith("embedded:smollm2-135m+grpo-lora-")
    assert make_policy("embedded:sft")[1] == f"embedded:smollm2-135m+lora-{sft[:8]}"


def test_the_grpo_adapter_is_used_only_while_it_continues_the_sft_adapter_in_use(home):
    """A GRPO adapter trained on one SFT adapter must not override an SFT adapter retrained since (new tools)."""
    from macro.agent.local_llm import ADAPTER, GRPO_ADAPTER, grpo_in_use

    def manifest(folder: Path, **fields) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "manifest.json").write_text(json.dumps({"files": {}, **fields}))

    shipped_sft = json.loads((ADAPTER.shipped / "manifest.json").read_text())["sha256"]
    manifest(GRPO_ADAPTER.home_dir(), sha256="g1", start={"sft_sha256": shipped_sft})
    assert grpo_in_use() == GRPO_ADAPTER.home_dir()
    manifest(ADAPTER.home_dir(), sha256="retrained")
    assert grpo_in_use() is None
    manifest(GRPO_ADAPTER.home_dir(), sha256="g2", start={"sft_sha256": "retrained"})
    assert grpo_in_use() == GRPO_ADAPTER.home_dir()
