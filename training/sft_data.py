"""Tool-use dialogues for the SFT cold start, generated from the registry's tool specs and real cases.

Each tool carries example requests (``ToolSpec.examples``), the cases that exercise it (``ToolSpec.cases``) and
the kinds its calls read (``ToolSpec.inputs``, whose missing ones another tool must make first); nothing here names
a tool. Every fifth example is kept out of training (``split_examples(tool, "test")``): a plug-in's own held-out
phrasings. Dialogues are rendered with the same prompt functions the agent uses at run time, and tool results come
from really running the tools on the cases, so final answers learn to quote real outputs.

Rows are TRL prompt-completion conversations: ``{"prompt": [...], "completion": [assistant turn], ...}``.
"""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool

from macro.agent.loop import waiting
from macro.agent.prompts import system_message, to_chat
from macro.artifacts import ArtifactStore
from macro.case import Case
from macro.tools.base import MacroTool, ToolExample, admits, first_sentence
from macro.tools.executor import ToolExecutor
from macro.tools.registry import Registry

HELD_OUT_EVERY = 5
PER_CASE = 32  # first-call rows per tool on every case that offers it: on each case every offered tool is as likely
# a first call as another, so the request decides the tool, not the case (with 30 rows per tool spread over the
# cases, brain MRI requests collapsed to the segmentation, which the most rows there began with)
ELLIPTICAL = 6  # more threads per case for each tool with elliptical follow-ups: the random threads began with a
# volume on one turn in ten, too few to learn that "and the enhancing part?" after a slice means the enhancing volume
OPENERS = ["", "", "", "Hi. ", "Hello, ", "Please: ", "Quick question: ", "Doctor here. ", "OK. "]
CLOSERS = ["", "", "", " Thanks.", " Please.", " Thank you!"]
ANSWER_LEADS = ["", "", "", "Here is what I found. ", "Result: "]
SMALL_TALK = [
    ("Hello!", "Hello. Ask me about this scan: I can describe, render and measure it."),
    ("Who are you?", "I am MACRO, a medical imaging assistant. I answer from tool results, not guesses."),
    ("Thanks, that's all.", "You're welcome."),
]
OUT_OF_SCOPE = [
    "What's the weather like today?",
    "Book me an MRI appointment for Tuesday.",
    "Write a poem about radiology.",
    "What dose of ibuprofen should I take?",
    "Translate this report into German.",
    "Who won the football match yesterday?",
]


def split_examples(tool: MacroTool, split: str) -> list[ToolExample]:
    return [ex for i, ex in enumerate(tool.spec.examples) if (i % HELD_OUT_EVERY == 2) == (split == "test")]


def perturb(text: str, rng: random.Random) -> str:
    """Greeting, sign-off, occasional typos and lower-casing: the noise real users type."""
    text = rng.choice(OPENERS) + text + rng.choice(CLOSERS)
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
    registry: Registry

    @property
    def schemas(self) -> list[dict]:
        return [convert_to_openai_tool(t) for t in self.tools]

    def names(self) -> set[str]:
        return {t.name for t in self.tools}

    def examples(self, tool: MacroTool, split: str = "train", follow_ups: bool = False) -> list[ToolExample]:
        """The tool's examples whose arguments this case admits (no sequence on a one-channel scan, no axis on a 2D
        image): what the constrained policy can write here."""
        offered = next(t for t in self.tools if t.name == tool.name)
        parameters = convert_to_openai_tool(offered)["function"]["parameters"]
        pool = offered.spec.follow_ups if follow_ups else split_examples(offered, split)
        return [ex for ex in pool if admits(parameters, ex.args)]

    def plan(self, tool: MacroTool, args: dict, history: Sequence[dict] = ()) -> list[tuple[str, dict]]:
        """The calls a request for ``tool`` takes on this case given the thread's artifacts so far: what its spec
        says must come first (a segmentation before a volume when there is no mask), then the tool itself."""
        have = frozenset(a.get("kind") for a in history)
        before = self.registry.prerequisites(tool, self.case, have) or []
        return [(name, {}) for name in before] + [(tool.name, args)]

    def run(self, name: str, args: dict, history: list[dict]) -> ToolMessage:
        """Run a tool for real; identical calls on identical inputs come from the executor's result cache
        (segmentation takes seconds)."""
        msg, _, produced = self.executor.run(
            {"name": name, "args": args, "id": f"call_{name}"}, self.case, list(history)
        )
        history.extend(produced)
        return msg


def contexts(cases: Iterable[Case], registry: Registry, workdir: Path) -> list[Context]:
    executor = ToolExecutor(registry, ArtifactStore(workdir))
    return [Context(c, registry.for_case(c), executor, registry) for c in cases]


def _row(
    ctx: Context,
    messages: Sequence[BaseMessage],
    target: AIMessage,
    kind: str,
    tool: str | None,
    args: dict | None,
    history: Sequence[dict] = (),
) -> dict:
    """One training row: the conversation so far rendered as at run time (tools waiting for an input the thread's
    artifacts ``history`` lacks say which call comes first), and the reply to learn."""
    have = frozenset(a.get("kind") for a in history)
    waits = waiting(ctx.registry, ctx.case, ctx.tools, have)
    chat = to_chat([system_message(ctx.case.summary()), *messages, target], ctx.schemas, waits)
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


def _call(ctx: Context, name: str, args: dict) -> AIMessage:
    """A call with its arguments in the schema's order, the only order the decoding grammar admits."""
    order = list(ctx.registry.get(name).args_schema.model_fields)
    args = dict(sorted(args.items(), key=lambda kv: order.index(kv[0])))
    return AIMessage("", tool_calls=[{"name": name, "args": args, "id": f"call_{name}", "type": "tool_call"}])


def _headline(result: ToolMessage) -> str:
    art = result.artifact or {}
    return art.get("headline") or first_sentence(result.text)


def _answer(rng: random.Random, results: Sequence[ToolMessage]) -> AIMessage:
    """The reply once the results answer: each asked tool's one-sentence result, a failure said plainly."""
    parts = [_headline(r) for r in results if r.status != "error"]
    failed = [f"{r.name} failed: {r.text.removeprefix('error: ')}" for r in results if r.status == "error"]
    lead = rng.choice(ANSWER_LEADS) if parts else ""
    return AIMessage(lead + " ".join(parts + failed))


def _turn(
    ctx: Context,
    rng: random.Random,
    before: list[BaseMessage],
    request: str,
    asks: Sequence[tuple[MacroTool, dict]],
    history: list[dict],
    kind: str,
) -> tuple[list[dict], list[BaseMessage]]:
    """One user turn asking for ``asks``: a row per call (each given the results so far), then the answer row.
    Returns the rows and the conversation after the turn (for follow-up turns)."""
    messages = [*before, HumanMessage(request)]
    rows, answered = [], []
    for tool, args in asks:
        plan = ctx.plan(tool, args, history)
        for i, (name, call_args) in enumerate(plan):
            call = _call(ctx, name, call_args)
            rows.append(_row(ctx, messages, call, kind if i == 0 else "chain", name, call_args, history))
            result = ctx.run(name, call_args, history)
            messages += [call, result]
            if name == tool.name:
                answered.append(result)
    if any(r.status == "error" for r in answered):
        return [], messages  # an example whose arguments do not fit this case (no such sequence) teaches nothing
    answer = _answer(rng, answered)
    rows.append(_row(ctx, messages, answer, "answer", None, None, history))
    return rows, [*messages, answer]


def conversation_rows(ctxs: Sequence[Context], rng: random.Random, follow_ups: int) -> list[dict]:
    """Whole conversations on every case, from the tools' specs and real results:

    - first calls: :data:`PER_CASE` for every tool the case offers (its training examples that fit the case, in
      turn from a random start, perturbed), prerequisites first, then the answer quoting the results;
    - two requests in one message, answered after both;
    - follow-up turns in a thread, on another tool and on the same tool with other arguments, in the spec's
      elliptical ``follow_ups`` ("And the core?") where it has them (earlier artifacts reused: no second
      segmentation); :data:`ELLIPTICAL` more threads per tool with follow-ups start with that tool;
    - recovery: after a failed call (a tool the case does not offer, a tool run before its input exists), the
      right call;
    - "no offered tool can answer that" for off-topic requests (not for requests of tools other cases offer: "Is
      this malignant?" is another tool's request on a chest film but this case's on a skin lesion, and trained
      both ways the policy refused the skin lesion's own question);
    - small talk.
    """
    rows: list[dict] = []
    for ctx in ctxs:
        train = [(tool, ex) for tool in ctx.tools for ex in ctx.examples(tool)]
        for tool in ctx.tools:
            examples = ctx.examples(tool)
            start = rng.randrange(len(examples)) if examples else 0
            for i in range(PER_CASE if examples else 0):
                ex = examples[(start + i) % len(examples)]
                turn, _ = _turn(ctx, rng, [], perturb(ex.request, rng), [(tool, ex.args)], [], "first_call")
                rows += turn  # with the answer: trained on one turn in three, it made unasked calls after results
        threads = [rng.sample(train, 2) for _ in range(follow_ups)]
        for tool in ctx.tools:  # every elliptical follow-up a tool has, asked after another tool's turn
            own = [(t, e) for t, e in train if t.name == tool.name]
            others = [(t, e) for t, e in train if t.name != tool.name]
            if ctx.examples(tool, follow_ups=True) and own and others:
                threads += [[rng.choice(own), rng.choice(others)] for _ in range(ELLIPTICAL)]
        for (t1, e1), (t2, e2) in threads:
            if t1.name != t2.name:
                request = f"{e1.request.rstrip('.?!')}, and {e2.request[0].lower()}{e2.request[1:]}"
                turn, _ = _turn(ctx, rng, [], perturb(request, rng), [(t1, e1.args), (t2, e2.args)], [], "first_call")
                rows += turn
            again = [ex for ex in ctx.examples(t1, follow_ups=True) or ctx.examples(t1) if ex.args != e1.args]
            history: list[dict] = []
            _, convo = _turn(ctx, rng, [], perturb(e1.request, rng), [(t1, e1.args)], history, "first_call")
            for t, e in [(t2, e2)] + ([(t1, rng.choice(again))] if again else []):  # another tool; the same, anew
                second, convo = _turn(ctx, rng, convo, perturb(e.request, rng), [(t, e.args)], history, "follow_up")
                rows += second
        rows += _recovery_rows(ctx, rng, train)
        cannot = (
            "None of the tools offered for this scan can answer that. I can use: "
            + ", ".join(sorted(ctx.names()))
            + "."
        )
        for request in rng.sample(OUT_OF_SCOPE, k=3):
            rows.append(_row(ctx, [HumanMessage(perturb(request, rng))], AIMessage(cannot), "no_tool", None, None))
        for request, reply in SMALL_TALK:
            rows.append(_row(ctx, [HumanMessage(request)], AIMessage(reply), "small_talk", None, None))
    return rows


def _recovery_rows(ctx: Context, rng: random.Random, train: Sequence[tuple[MacroTool, ToolExample]]) -> list[dict]:
    """After a failed call comes the call that works: a real error from the executor, then the right plan."""
    rows = []
    other = sorted({t.name for t in ctx.registry.atomic().values()} - ctx.names())
    for tool, ex in rng.sample(list(train), k=min(3, len(train))):
        plan = ctx.plan(tool, ex.args)
        wrong = (plan[-1][0], plan[-1][1]) if len(plan) > 1 else (rng.choice(other), {}) if other else None
        if wrong is None:
            continue
        user = HumanMessage(perturb(ex.request, rng))
        failed = ctx.run(wrong[0], wrong[1], [])
        if failed.status != "error":
            continue
        name, args = plan[0]
        rows.append(_row(ctx, [user, _call(ctx, *wrong), failed], _call(ctx, name, args), "recovery", name, args))
    return rows


def build(cases: Sequence[Case], registry: Registry, seed: int = 0, follow_ups: int = 6) -> list[dict]:
    """Training rows, shuffled. The held-out requests are not generated here: :mod:`macro.eval.policy` reads a
    hand-written file, so the figure measures new wording, not these templates."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="macro-sft-") as tmp:
        rows = conversation_rows(contexts(cases, registry, Path(tmp)), rng, follow_ups)
    rng.shuffle(rows)
    return rows
