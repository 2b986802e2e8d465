"""Tool-use dialogues for the SFT cold start, generated from the registry's tool specs and real cases.

Each tool carries example requests (``ToolSpec.examples``). Every fifth one is held out, together with its own
greetings and sign-offs, so the held-out prompts share no wording with training. Dialogues are rendered with the
same prompt functions the agent uses at run time, and tool results come from really running the tools on the
cases, so final answers learn to quote real outputs.

Rows are TRL prompt-completion conversations: ``{"prompt": [...], "completion": [assistant turn], ...}``.
"""

from __future__ import annotations

import json
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool

from macro.agent.prompts import system_message, to_chat
from macro.artifacts import ArtifactStore
from macro.case import Case
from macro.tools.base import MacroTool, ToolExample
from macro.tools.executor import ToolExecutor
from macro.tools.registry import Registry

HELD_OUT_EVERY = 5
OPENERS = {
    "train": ["", "", "", "Hi. ", "Hello, ", "Please: ", "Quick question: ", "Doctor here. ", "OK. "],
    "test": ["", "Hey there, ", "Good morning. ", "Could you help? ", "Urgent: "],
}
CLOSERS = {"train": ["", "", "", " Thanks.", " Please.", " Thank you!"], "test": ["", " Cheers.", " ASAP please."]}
ANSWER_LEADS = ["", "According to {tool}: ", "Result from {tool}: ", "{tool} reports: ", "Here is what I found. "]
SMALL_TALK = [
    ("Hello!", "Hello. Ask me about this scan: I can describe, render and measure it."),
    ("Who are you?", "I am MACRO, a medical imaging assistant. I answer from tool results, not guesses."),
    ("Thanks, that's all.", "You're welcome."),
    ("Can you diagnose me?", "I am a research tool, not a doctor. I can measure and describe this scan."),
]
TWO_STEP = [
    (
        "Describe the scan and then show me an axial slice.",
        [("describe_scan", {}), ("render_slice", {"axis": "axial"})],
    ),
    ("Measure the whole tumour, then render it.", [("measure_volume", {"region": "WT"}), ("render_slice", {})]),
    (
        "Give me the ET volume and the WT volume.",
        [("measure_volume", {"region": "ET"}), ("measure_volume", {"region": "WT"})],
    ),
    (
        "What is this scan, and how big is the tumour core?",
        [("describe_scan", {}), ("measure_volume", {"region": "TC"})],
    ),
    ("Crop to the head and then describe it.", [("crop_resample", {"crop": True}), ("describe_scan", {})]),
]


def split_examples(tool: MacroTool, split: str) -> list[ToolExample]:
    return [ex for i, ex in enumerate(tool.spec.examples) if (i % HELD_OUT_EVERY == 2) == (split == "test")]


def perturb(text: str, rng: random.Random, split: str) -> str:
    """Greeting, sign-off, occasional typos and lower-casing: the noise real users type."""
    text = rng.choice(OPENERS[split]) + text + rng.choice(CLOSERS[split])
    if rng.random() < 0.3:
        words = text.split(" ")
        for _ in range(rng.randint(1, 2)):
            i = rng.randrange(len(words))
            w = words[i]
            if len(w) > 3:
                j = rng.randrange(1, len(w) - 1)
                words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :] if rng.random() < 0.5 else w[:j] + w[j + 1 :]
        text = " ".join(words)
    return text.lower() if rng.random() < 0.12 else text


@dataclass
class Context:
    """One case with its offered tools; tool results come from the agent's own executor, so they are real."""

    case: Case
    tools: list[MacroTool]
    executor: ToolExecutor

    @property
    def schemas(self) -> list[dict]:
        return [convert_to_openai_tool(t) for t in self.tools]

    memo: dict = field(default_factory=dict)

    def names(self) -> set[str]:
        return {t.name for t in self.tools}

    @property
    def needs_segmentation(self) -> bool:
        """No reference mask but a segmentation tool: volume questions start with a segmentation."""
        return "segment_brain_tumor" in self.names() and self.case.label_path is None

    def first_action(self, tool: str, args: dict) -> tuple[str, dict]:
        return ("segment_brain_tumor", {}) if tool == "measure_volume" and self.needs_segmentation else (tool, args)

    def run(self, name: str, args: dict, history: list[dict]) -> ToolMessage:
        """Run a tool for real; identical calls on identical inputs are reused (segmentation takes seconds)."""
        key = (name, json.dumps(args, sort_keys=True), tuple(a["id"] for a in history))
        if key not in self.memo:
            msg, _, produced = self.executor.run(
                {"name": name, "args": args, "id": f"call_{name}"}, self.case, list(history)
            )
            self.memo[key] = (msg, produced)
        msg, produced = self.memo[key]
        history.extend(produced)
        return msg


def contexts(cases: Iterable[Case], registry: Registry, workdir: Path) -> list[Context]:
    executor = ToolExecutor(registry, ArtifactStore(workdir))
    return [Context(c, registry.for_case(c), executor) for c in cases]


def _row(
    ctx: Context, messages: Sequence[BaseMessage], target: AIMessage, kind: str, tool: str | None, args: dict | None
) -> dict:
    chat = to_chat([system_message(ctx.case.summary()), *messages, target], ctx.schemas)
    user = next((m.text for m in reversed(messages) if isinstance(m, HumanMessage)), "")
    return {
        "prompt": chat[:-1],
        "completion": chat[-1:],
        "kind": kind,
        "tool": tool or "",
        "args": args or {},
        "user": user,
        "case_ref": ctx.case.ref(),
    }


def _call(name: str, args: dict) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": name, "args": args, "id": f"call_{name}", "type": "tool_call"}])


def _answer(rng: random.Random, results: list[ToolMessage]) -> AIMessage:
    parts = [rng.choice(ANSWER_LEADS).format(tool=r.name) + r.text for r in results if r.status != "error"]
    failed = [f"{r.name} failed ({r.text.removeprefix('error: ')})" for r in results if r.status == "error"]
    return AIMessage(" ".join(parts + failed))


def first_call_rows(ctxs: Sequence[Context], split: str, rng: random.Random, per_example: int) -> list[dict]:
    rows = []
    for ctx in ctxs:
        for tool in ctx.tools:
            for ex in split_examples(tool, split):
                name, args = ctx.first_action(tool.name, ex.args)
                for _ in range(per_example):
                    user = HumanMessage(perturb(ex.request, rng, split))
                    rows.append(_row(ctx, [user], _call(name, args), "first_call", name, args))
    return rows


def dialogue_rows(ctxs: Sequence[Context], rng: random.Random, n_answers: int) -> list[dict]:
    """Answers that quote tool results, second calls of two-step requests, follow-up turns, small talk."""
    rows = []
    for _ in range(n_answers):
        ctx = rng.choice(ctxs)
        tool = rng.choice(ctx.tools)
        ex = rng.choice(split_examples(tool, "train"))
        history: list[dict] = []
        user = HumanMessage(perturb(ex.request, rng, "train"))
        name, args = ctx.first_action(tool.name, ex.args)
        call = _call(name, args)
        result = ctx.run(name, args, history)
        answer = _answer(rng, [result])
        rows.append(_row(ctx, [user, call, result], answer, "answer", None, None))
        other = rng.choice(ctx.tools)
        follow = rng.choice(split_examples(other, "train"))
        has_mask = any(a.get("kind") == "mask" for a in history)
        name, args = (other.name, follow.args) if has_mask else ctx.first_action(other.name, follow.args)
        rows.append(
            _row(
                ctx,
                [user, call, result, answer, HumanMessage(perturb(follow.request, rng, "train"))],
                _call(name, args),
                "follow_up",
                name,
                args,
            )
        )
    for ctx in [c for c in ctxs if c.needs_segmentation]:
        measure = next(t for t in ctx.tools if t.name == "measure_volume")
        for ex in rng.sample(split_examples(measure, "train"), k=min(6, len(split_examples(measure, "train")))):
            plan = [("segment_brain_tumor", {}), ("measure_volume", ex.args)]
            rows += _chain_rows(ctx, perturb(ex.request, rng, "train"), plan, rng)
    for ctx in ctxs:
        for request, plan in TWO_STEP:
            if not all(name in ctx.names() for name, _ in plan):
                continue
            rows += _chain_rows(ctx, perturb(request, rng, "train"), plan, rng)
        for request, reply in SMALL_TALK:
            rows.append(_row(ctx, [HumanMessage(request)], AIMessage(reply), "small_talk", None, None))
    return rows


def _chain_rows(ctx: Context, request: str, plan: list[tuple[str, dict]], rng: random.Random) -> list[dict]:
    """One multi-step request: a row per call (given the results so far), then the answer quoting them."""
    history: list[dict] = []
    messages: list[BaseMessage] = [HumanMessage(request)]
    results, rows = [], []
    for name, args in plan:
        rows.append(_row(ctx, messages, _call(name, args), "chain", name, args))
        results.append(ctx.run(name, args, history))
        messages += [_call(name, args), results[-1]]
    rows.append(_row(ctx, messages, _answer(rng, results), "answer", None, None))
    return rows


def build(
    cases: Sequence[Case], registry: Registry, seed: int = 0, per_example: int = 1, n_answers: int = 20
) -> dict[str, list[dict]]:
    """``{"train": rows, "test": rows}``; test rows are first calls on held-out wording only."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="macro-sft-") as tmp:
        ctxs = contexts(cases, registry, Path(tmp))
        train = first_call_rows(ctxs, "train", rng, per_example) + dialogue_rows(ctxs, rng, n_answers)
        test = first_call_rows(ctxs, "test", rng, 2)
    rng.shuffle(train)
    rng.shuffle(test)
    return {"train": train, "test": test}
