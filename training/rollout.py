"""GRPO rollouts through the agent's own loop: the same prompts, grammar, parser, executor and turn rules.

TRL's built-in tool loop does not fit the embedded policy (it needs a chat template it recognises, renders tools its
own way and bypasses the agent's retry, repeat and answer rules), so :class:`Rollouts` is the trainer's
``rollout_func``. One episode is one agent turn on a MACRO-Bench train task: the policy samples a reply under the
offered tools' grammar, :mod:`macro.agent.loop` decides what follows (a format retry, the tools, the answer), the
executor runs the calls, and the family's checker judges the answer :func:`~macro.agent.loop.final_answer` writes.

The episode is one token sequence: the first prompt, then every sampled reply with its end of turn (trained,
``env_mask`` 1) and the tool or retry turns between them (``env_mask`` 0), kept as sampled (never re-tokenised) and
ending at the policy's last end of turn, so TRL scores exactly what was generated. Deviation from a run-time turn,
because one sequence has one prompt: the system turn keeps the first decision's tool lines (a tool that waits for
another call still says "First run: ..." after that call); the grammar follows the artifacts the episode has made,
as at run time, so a call that must wait still cannot be written.

Zero-variance groups teach nothing (every advantage is 0), so a group whose episodes all get the same reward is
redrawn, up to ``redraws`` times, on the task whose outcome is least certain so far: tasks the current policy
sometimes fails. Identical calls of one group's episodes (same task, same calls before) run once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from langchain_core.messages import HumanMessage
from langchain_core.utils.function_calling import convert_to_openai_tool

from macro.agent.grammar import Constraint, decision_grammar
from macro.agent.local_llm import decode, reply, sampler
from macro.agent.loop import (
    MAX_STEPS,
    call_key,
    final_answer,
    format_error,
    next_node,
    retry_message,
    storable,
    waiting,
)
from macro.agent.prompts import system_message, to_chat
from macro.artifacts import ArtifactStore
from macro.case import Case, load_case
from macro.eval.bench.tasks import FAMILIES, Task
from macro.tools.base import case_artifacts
from macro.tools.executor import ToolExecutor
from macro.tools.registry import Registry


@dataclass
class Episode:
    task: Task
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    format_errors: list[str] = field(default_factory=list)
    answer: str = ""
    stopped: str = ""  # why a loop guard ended the turn, if one did
    verdict: bool = False
    composites: list[str] = field(default_factory=list)  # admitted composites offered on the task's case

    def fields(self) -> dict:
        """What the rewards read (TRL passes each to them as a keyword argument, one value per episode)."""
        return {
            "task_id": self.task.id,
            "family": self.task.family,
            "expected": self.task.expected,
            "steps": self.steps,
            "format_errors": self.format_errors,
            "answer": self.answer,
            "stopped": self.stopped,
            "verdict": self.verdict,
            "composites": self.composites,
        }


class ModelSampler:
    """One decision sampled from the training model itself (CPU, or one GPU without vLLM): the policy's own
    :func:`~macro.agent.local_llm.decode` under the decision's grammar, exact speculative sampling over the prompt
    lookup drafts, and a KV cache kept across the decisions of an episode (``start`` makes it)."""

    def __init__(self, model, eos: int, rollouts: "Rollouts"):
        self.model, self.eos, self.rollouts = model, eos, rollouts

    def start(self):
        from transformers import DynamicCache

        return DynamicCache()

    def __call__(self, context: list[int], cache, callable_now: list[dict], generator) -> list[int]:
        import torch

        r = self.rollouts
        guide = r._constraint.guide(callable_now)
        ids = torch.tensor([context], device=self.model.device)
        pick = sampler(r.temperature, generator)
        return decode(self.model, ids, cache, self.eos, r.max_new_tokens, guide, pick=pick)[0]


class VLLMSampler:
    """One decision sampled by the trainer's colocated vLLM engine (GPU configs), under the same decision grammar
    as structured output (vLLM's guidance backend reads its Lark and ``%json``). TRL pushes the trained weights to
    the engine before each rollout."""

    def __init__(self, llm, eos: int, rollouts: "Rollouts"):
        self.llm, self.eos, self.rollouts = llm, eos, rollouts

    def start(self):
        return None

    def __call__(self, context: list[int], state, callable_now: list[dict], generator) -> list[int]:
        import torch
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        r = self.rollouts
        params = SamplingParams(
            n=1,
            temperature=r.temperature,
            max_tokens=r.max_new_tokens,
            stop_token_ids=[self.eos],
            seed=int(torch.randint(2**31 - 1, (1,), generator=generator)),
            structured_outputs=StructuredOutputsParams(grammar=decision_grammar(callable_now)),
        )
        out = self.llm.generate([{"prompt_token_ids": context}], sampling_params=params, use_tqdm=False)
        tokens = list(out[0].outputs[0].token_ids)
        return tokens[:-1] if tokens and tokens[-1] == self.eos else tokens


class Rollouts:
    """TRL's ``rollout_func``: ``rollouts(prompts, trainer)`` runs one episode per prompt (a task id; TRL repeats
    each ``num_generations`` times) and returns the token sequences, masks and the fields the rewards read.

    ``score`` maps an episode to its total reward (the recipe's weighted rewards), used only to spot groups whose
    episodes all score the same.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        registry: Registry,
        work: Path,
        score: Callable[[Episode], float],
        temperature: float = 1.0,
        max_new_tokens: int = 96,
        max_steps: int = MAX_STEPS,
        redraws: int = 1,
        seed: int = 0,
    ):
        self.tasks = {t.id: t for t in tasks}
        self.registry = registry
        self.executor = ToolExecutor(registry, ArtifactStore(work / "artifacts"), cache=True)
        self.score = score
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.max_steps = max_steps
        self.redraws = redraws
        self.rng = random.Random(seed)
        self.seed = seed
        self.episodes = 0
        self.outcomes: dict[str, list[int]] = {}  # task id -> [successes, episodes]
        self.redrawn = 0
        self.groups = 0
        self._cases: dict[str, Case] = {}
        self._constraint: Constraint | None = None

    def case(self, task: Task) -> Case:
        if task.id not in self._cases:
            self._cases[task.id] = load_case(task.case if len(task.case) > 1 else task.case[0], task.modality)
        return self._cases[task.id]

    def __call__(self, prompts: list, trainer: Any) -> dict:
        import torch

        model = trainer.accelerator.unwrap_model(trainer.model)
        tokenizer = trainer.processing_class
        if self._constraint is None:
            self._constraint = Constraint(tokenizer)
        if getattr(trainer, "use_vllm", False):
            sample = VLLMSampler(trainer.vllm_generation.llm, tokenizer.eos_token_id, self)
        elif getattr(trainer, "is_deepspeed_enabled", False) and _zero_stage(trainer) == 3:
            raise ValueError(
                "under DeepSpeed ZeRO-3 the rollouts sample with vLLM (use_vllm); a rank's own forward "
                "passes would each wait for every other rank"
            )
        else:
            sample = ModelSampler(model, tokenizer.eos_token_id, self)
        was_training = model.training
        merged = isinstance(sample, ModelSampler) and hasattr(model, "merge_adapter")
        model.eval()
        if merged:
            model.merge_adapter()  # a third of the matmuls per pass while sampling; unmerged again to train
        episodes: list[Episode] = []
        try:
            with torch.no_grad():
                for task_id, size in _runs([_prompt_text(p) for p in prompts]):
                    episodes += self.group(sample, tokenizer, self.tasks[task_id], size)
        finally:
            if merged:
                model.unmerge_adapter()
            model.train(was_training)
        fields = [e.fields() for e in episodes]
        return {
            "prompt_ids": [e.prompt_ids for e in episodes],
            "completion_ids": [e.completion_ids for e in episodes],
            "logprobs": None,
            "env_mask": [e.env_mask for e in episodes],
            **{key: [f[key] for f in fields] for key in fields[0]},
        }

    def group(self, sample, tokenizer, task: Task, size: int) -> list[Episode]:
        """``size`` episodes of ``task``, redrawn on another task while every episode scores the same."""
        self.groups += 1
        for attempt in range(self.redraws + 1):
            memo: dict = {}
            group = [self.episode(sample, tokenizer, task, memo) for _ in range(size)]
            for e in group:
                wins = self.outcomes.setdefault(e.task.id, [0, 0])
                wins[0] += int(e.verdict)
                wins[1] += 1
            if len({round(self.score(e), 6) for e in group}) > 1 or attempt == self.redraws:
                return group
            self.redrawn += 1
            task = self.least_certain(exclude=task.id)
        return group

    def least_certain(self, exclude: str) -> Task:
        """The task whose success is least certain: p(1-p) with p = (wins + 1) / (episodes + 2), ties at random (so
        untried tasks, p = 1/2, come first)."""

        def uncertainty(task_id: str) -> float:
            wins, n = self.outcomes.get(task_id, (0, 0))
            p = (wins + 1) / (n + 2)
            return p * (1 - p)

        ids = [t for t in self.tasks if t != exclude]
        best = max(map(uncertainty, ids))
        return self.tasks[self.rng.choice([t for t in ids if uncertainty(t) == best])]

    def episode(self, sample, tokenizer, task: Task, memo: dict) -> Episode:
        """One agent turn on ``task``, sampled; never raises for a tool's sake (tool errors are tool messages)."""
        import torch

        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.episodes)
        self.episodes += 1
        case = self.case(task)
        tools = self.registry.for_case(case)
        schemas = [convert_to_openai_tool(t) for t in tools]
        first_wait = waiting(self.registry, case, tools, frozenset())
        messages: list = [system_message(case.summary()), HumanMessage(task.question)]

        def render(chat_messages: list, generation: bool) -> str:
            chat = to_chat(chat_messages, schemas, first_wait)
            return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=generation)

        prompt_ids = tokenizer(render(messages, True), add_special_tokens=False)["input_ids"]
        episode = Episode(task, list(prompt_ids))
        episode.composites = [t.name for t in tools if t.name not in self.registry.atomic()]
        context, state, history, session = list(prompt_ids), sample.start(), [], {}
        eos = tokenizer.eos_token_id
        while True:
            have = frozenset(a.get("kind") for a in case_artifacts(history, case.id))
            wait = waiting(self.registry, case, tools, have)
            new = sample(context, state, [t for t in schemas if t["function"]["name"] not in wait], generator)
            said = new + [eos]
            episode.completion_ids += said
            episode.env_mask += [1] * len(said)
            context += said
            ai = storable(reply(tokenizer.decode(new, skip_special_tokens=True).strip()))
            before = render(messages + [ai], False)
            messages.append(ai)
            error = format_error(ai)
            if error:
                episode.format_errors.append(error)
                messages.append(retry_message(error))
            node = next_node(messages, episode.steps, episode.format_errors, self.max_steps)
            if node == "answer":
                break
            if node == "tools":
                for call in ai.tool_calls:
                    key = (tuple(call_key(s) for s in _calls(episode.steps)), call_key(call))
                    if key not in memo:
                        memo[key] = self.executor.run(call, case, history, session)
                    message, step, produced = memo[key]
                    messages.append(message.model_copy(update={"tool_call_id": call["id"]}))
                    episode.steps.append(step.to_dict())
                    history += produced
            after = render(messages, True)
            if not (after.startswith(before) and before.endswith("\n")):
                raise ValueError("the chat template does not render a conversation as its turns in order")
            turns = tokenizer(after[len(before) - 1 :], add_special_tokens=False)["input_ids"]  # from the "\n"
            episode.completion_ids += turns
            episode.env_mask += [0] * len(turns)
            context += turns
        episode.answer, episode.stopped = final_answer(messages, episode.steps, episode.format_errors, self.max_steps)
        episode.verdict = bool(FAMILIES[task.family].check(task, episode.answer))
        return episode


def _zero_stage(trainer: Any) -> int:
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return int(plugin.zero_stage) if plugin is not None else 0


def _calls(steps: list[dict]) -> list[dict]:
    return [{"name": s["tool"], "args": s["args"]} for s in steps]


def _prompt_text(prompt: Any) -> str:
    """A dataset prompt is the task id, as plain text or as the content of one user turn."""
    if isinstance(prompt, list):
        return prompt[-1]["content"]
    return str(prompt)


def _runs(items: list[str]) -> list[tuple[str, int]]:
    """Consecutive equal items as (item, count): TRL lays out each prompt's generations side by side."""
    out: list[tuple[str, int]] = []
    for item in items:
        if out and out[-1][0] == item:
            out[-1] = (item, out[-1][1] + 1)
        else:
            out.append((item, 1))
    return out
