"""The rules of one agent turn as plain functions, so the LangGraph agent and GRPO rollouts apply the same ones.

A turn: the policy decides (:func:`decide`); a reply that is not a valid call gets a retry message
(:func:`retry_message`) at most :data:`MAX_FORMAT_RETRIES` times; calls run until the policy answers in prose, the
turn has made :data:`MAX_STEPS` tool calls, or the policy repeats a call it already made (:func:`next_node`); then
:func:`final_answer` writes what the person reads, with the reason when a guard stopped the turn (:func:`stop_note`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.messages.tool import invalid_tool_call

from macro.agent.consistency import reconcile
from macro.agent.prompts import CALL_RULE
from macro.agent.toolcall import unstorable
from macro.case import Case
from macro.tools.executor import Step
from macro.tools.registry import Registry

MAX_STEPS = 6
REPEAT_NOTE = "the policy asked to repeat a call it had already made, so the agent answered from the results so far."
LIMIT_NOTE = "the turn reached the step limit ({max_steps} tool calls); this answers from the results so far."
STOP_NOTES = (REPEAT_NOTE, LIMIT_NOTE.split(" ({")[0])  # what a loop-guard stop leaves in an answer
MAX_FORMAT_RETRIES = 2
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")


def decide(
    policy: BaseChatModel, registry: Registry, case: Case, messages: list, have: frozenset[str] = frozenset()
) -> AIMessage:
    """One decision of the policy on ``case`` with the case's tools offered. A policy that decodes under a grammar
    (``constrained``) is told which of them must wait for another call, given the artifact kinds the thread has
    (``have``): a call whose input nothing has made yet (a volume before any mask) then cannot be written, so it
    cannot fail, and the prompt says which call comes first."""
    tools = registry.for_case(case)
    options = {}
    if getattr(policy, "constrained", False):
        options["waiting"] = waiting(registry, case, tools, have)
    return policy.bind_tools(tools).invoke(messages, **options)


def calls_made(steps: list[dict]) -> int:
    """Tool calls a turn has made: a composite counts its steps, so the step limit bounds the work, not the names."""
    return sum(len(s.get("children") or ()) or 1 for s in steps)


def storable(ai: AIMessage) -> AIMessage:
    """The reply with every call whose arguments a checkpoint cannot hold moved to ``invalid_tool_calls`` with the
    reason, so the policy is asked again instead of the turn failing to save."""
    bad = [(call, why) for call in ai.tool_calls if (why := unstorable(call.get("args")))]
    if not bad:
        return ai
    invalid = [
        invalid_tool_call(name=call["name"], args=str(call.get("args"))[:200], id=call.get("id"), error=why)
        for call, why in bad
    ]
    kept = [call for call in ai.tool_calls if all(call is not b for b, _ in bad)]
    return ai.model_copy(update={"tool_calls": kept, "invalid_tool_calls": [*ai.invalid_tool_calls, *invalid]})


def waiting(registry: Registry, case: Case, tools: list, have: frozenset[str]) -> dict[str, list[str]]:
    """The offered tools that cannot run yet on ``case`` given the artifact kinds ``have``, each with the calls that
    must come first."""
    plans = {t.name: registry.prerequisites(t, case, have) for t in tools}
    return {name: plan for name, plan in plans.items() if plan}


def call_key(call: dict) -> str:
    """A call's identity for spotting repeats: its name and its arguments in key order."""
    return call["name"] + json.dumps(call.get("args") or {}, sort_keys=True)


def repeats(messages: list) -> bool:
    """The last message only repeats calls already made in this turn: a loop, so answer from what we have."""
    start = max(i for i, m in enumerate(messages) if isinstance(m, HumanMessage))
    earlier = {call_key(c) for m in messages[start:-1] if isinstance(m, AIMessage) for c in m.tool_calls}
    calls = messages[-1].tool_calls
    return bool(calls) and all(call_key(c) in earlier for c in calls)


def format_error(ai: AIMessage) -> str:
    """Why the reply is neither a call nor an answer (it tried to call and failed), or ``""``."""
    if ai.tool_calls or not ai.invalid_tool_calls:
        return ""
    return "; ".join(c.get("error") or "malformed tool call" for c in ai.invalid_tool_calls)


def retry_message(error: str) -> HumanMessage:
    """What the policy is told after a reply with :func:`format_error` ``error``."""
    return HumanMessage(f"Your last reply was not a valid tool call ({error}). {CALL_RULE}")


def next_node(messages: list, steps: list[dict], retries: list[str], max_steps: int = MAX_STEPS) -> str:
    """Where the turn goes after the policy's reply: ``policy`` (a format retry), ``tools`` or ``answer``."""
    last = messages[-1]
    if isinstance(last, HumanMessage):  # a format retry was queued
        return "policy" if len(retries) <= MAX_FORMAT_RETRIES else "answer"
    if isinstance(last, AIMessage) and last.tool_calls and calls_made(steps) < max_steps and not repeats(messages):
        return "tools"
    return "answer"


def stop_note(messages: list, retries: list[str], prose: str, max_steps: int = MAX_STEPS) -> str:
    """Why the turn ended without the policy's own answer (a loop guard or unusable replies), or ``""``."""
    last = messages[-1]
    if isinstance(last, AIMessage) and last.tool_calls:
        return REPEAT_NOTE if repeats(messages) else LIMIT_NOTE.format(max_steps=max_steps)
    if retries and not prose:
        return "the policy did not produce a valid tool call or an answer."
    return ""


def final_answer(
    messages: list, steps: list[dict], retries: list[str], max_steps: int = MAX_STEPS, artifacts: Path | None = None
) -> tuple[str, str]:
    """The turn's answer once it has reached the answer node (:func:`compose_answer` of its last reply and steps),
    and its :func:`stop_note` (``""`` when the policy answered)."""
    last = messages[-1]
    prose = last.text.strip() if isinstance(last, AIMessage) and not last.tool_calls else ""
    question = next((m.text for m in reversed(messages) if isinstance(m, HumanMessage)), "")
    note = stop_note(messages, retries, prose, max_steps)
    return compose_answer(prose, [Step(**s) for s in steps], question, note, artifacts), note


FINDINGS = "\nFindings (from tools):"  # heads the answer's last part, the tools' results one per line


def without_findings(answer: str) -> str:
    """The lead and caveats of a composed answer, for a view that shows each tool call beside it (the web UI)."""
    return answer.split("\n" + FINDINGS, 1)[0]


def compose_answer(
    prose: str, steps: list[Step], question: str = "", note: str = "", artifacts: Path | None = None
) -> str:
    """The answer a person reads, in three parts.

    First line: the headline of the last successful tool call (each tool states its result in one sentence), or the
    policy's prose when it quotes that headline word for word and every number in it came from a tool or the
    question. A small model's paraphrase of a tool sentence can drop or change a fact ("2 channels" for "1
    channel", no modality), so the tool's own sentence wins; without a tool result the prose leads if its numbers are
    grounded. Then caveats: what the tools said the reader must know (adaptation used), tools that declined (outside
    their training images), failed calls, withheld prose and why the turn stopped, then the consistency of tools
    that spoke about the same finding.
    Then the findings block, naming artifacts by paths a user can open (under ``artifacts``, the store's folder).
    """
    grounded_numbers = [float(n) for s in steps if s.ok for n in _NUMBER.findall(s.summary)]
    grounded_numbers += [float(n) for n in _NUMBER.findall(question)]
    invented = [n for n in _NUMBER.findall(prose) if not any(_same(float(n), g) for g in grounded_numbers)]
    ok_steps = [s for s in steps if s.ok]
    lead_step = ok_steps[-1] if ok_steps else None
    if prose and not invented and (lead_step is None or lead_step.headline in prose):
        lead = prose
    elif lead_step is not None:
        lead = lead_step.headline
    else:
        lead = "No tool produced a result."
    caveats = []
    for s in ok_steps:
        caveats += [c for c in s.caveats if c not in caveats]
        declined = s.data.get("in_distribution") is False or s.data.get("verdict") == "outside"
        if declined and s is not lead_step:
            caveats.append(s.headline)
    caveats += [f"{s.tool} failed: {s.error}" for s in steps if not s.ok]
    if invented:
        caveats.append(f"The policy's own text was withheld: it stated {', '.join(invented)}, which no tool produced.")
    if note:
        caveats.append(note)
    lines = [lead] + [f"Caveat: {c}" for c in caveats] + reconcile(steps)
    if steps:
        lines.append(FINDINGS)
        for i, s in enumerate(steps, 1):
            outcome = s.summary if s.ok else f"FAILED: {s.error}"
            shown = [str(Path(artifacts).resolve() / o) if artifacts is not None else o for o in s.outputs]
            arts = f" [artifacts: {', '.join(shown)}]" if s.outputs else ""
            lines.append(f"  {i}. {s.call}: {outcome}{arts}")
    return "\n".join(lines).strip()


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= max(0.005 * abs(b), 0.051)
