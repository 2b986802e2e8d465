"""The agent: a LangGraph ``StateGraph`` of policy → tools → … → answer, with threads in SQLite.

One turn: the policy proposes a call; the executor validates and runs it (errors go back as tool messages);
this repeats until the policy answers in prose, or the step limit is hit. The answer node then writes the final
answer: the policy's prose only if it quotes the answering tool's sentence and every number in it comes from a tool
result or the question, followed by a findings block built from the trajectory. Every turn is recorded as a
:class:`~macro.trajectory.Trajectory`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import operator
import re
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, ToolMessage
from langchain_core.messages.tool import invalid_tool_call
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from macro.agent.consistency import reconcile
from macro.agent.prompts import CALL_RULE, system_message
from macro.agent.toolcall import unstorable
from macro.artifacts import ArtifactStore, locked_file
from macro.case import Case, load_case_ref, share_case
from macro.config import Home
from macro.errors import CaseError, MacroError, ModelUnavailable
from macro.skills.library import load_composites
from macro.tools.base import case_artifacts
from macro.tools.executor import Step, ToolExecutor
from macro.tools.registry import Registry
from macro.tools.worker import POOL
from macro.trajectory import Trajectory, TrajectoryStore

MAX_STEPS = 6
REPEAT_NOTE = "the policy asked to repeat a call it had already made, so the agent answered from the results so far."
LIMIT_NOTE = "the turn reached the step limit ({max_steps} tool calls); this answers from the results so far."
STOP_NOTES = (REPEAT_NOTE, LIMIT_NOTE.split(" ({")[0])  # what a loop-guard stop leaves in an answer
MAX_FORMAT_RETRIES = 2
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")


def _turn_reducer(old: list | None, new: list | None) -> list:
    """``None`` starts a new turn; anything else appends."""
    return [] if new is None else (old or []) + new


class AgentState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    case: dict
    artifacts: Annotated[list[dict], operator.add]
    steps: Annotated[list[dict], _turn_reducer]
    retries: Annotated[list[str], _turn_reducer]
    answer: str
    hints: list[str]


@dataclass
class TurnResult:
    answer: str
    thread_id: str
    trajectory: Trajectory


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


def build_graph(
    policy: BaseChatModel,
    registry: Registry,
    store: ArtifactStore,
    max_steps: int = MAX_STEPS,
    checkpointer: Any = None,
    sessions: dict[str, dict] | None = None,
    cache: bool = True,
):
    """``sessions`` maps thread id → in-memory tool state (adapted models), kept for the life of the process;
    ``cache``: reuse results of deterministic tools (:mod:`macro.tools.cache`)."""
    executor = ToolExecutor(registry, store, cache)
    if executor.isolate:
        POOL.prestart()  # its imports overlap with the policy's first decision
    sessions = {} if sessions is None else sessions

    def policy_node(state: AgentState) -> dict:
        case = load_case_ref(state["case"])
        messages = [system_message(case.summary(), state.get("hints") or ()), *state["messages"]]
        have = frozenset(a.get("kind") for a in case_artifacts(state.get("artifacts", []), case.id))
        try:
            ai = storable(decide(policy, registry, case, messages, have))
        except MacroError:
            raise
        except Exception as exc:  # an unreachable server or a broken backend: one line for the user, not a traceback
            raise ModelUnavailable(f"the policy backend failed ({type(exc).__name__}: {str(exc)[:300]})") from None
        if ai.tool_calls or not ai.invalid_tool_calls:
            return {"messages": [ai]}
        error = "; ".join(c.get("error") or "malformed tool call" for c in ai.invalid_tool_calls)
        retry = HumanMessage(f"Your last reply was not a valid tool call ({error}). {CALL_RULE}")
        return {"messages": [ai, retry], "retries": [error]}

    def route(state: AgentState) -> str:
        last = state["messages"][-1]
        if isinstance(last, HumanMessage):  # a format retry was queued
            return "policy" if len(state.get("retries", [])) <= MAX_FORMAT_RETRIES else "answer"
        if (
            isinstance(last, AIMessage)
            and last.tool_calls
            and calls_made(state.get("steps", [])) < max_steps
            and not _repeats(state["messages"])
        ):
            return "tools"
        return "answer"

    def tools_node(state: AgentState, config: RunnableConfig) -> dict:
        case = load_case_ref(state["case"])
        history = list(state.get("artifacts", []))
        session = sessions.setdefault(config["configurable"].get("thread_id", ""), {})
        messages, steps, new_artifacts = [], [], []
        for call in state["messages"][-1].tool_calls:
            msg, step, produced = executor.run(call, case, history, session)
            history += produced
            messages.append(msg)
            steps.append(step.to_dict())
            new_artifacts += produced
        return {"messages": messages, "steps": steps, "artifacts": new_artifacts}

    def answer_node(state: AgentState) -> dict:
        steps = [Step(**s) for s in state.get("steps", [])]
        last = state["messages"][-1]
        prose = last.text.strip() if isinstance(last, AIMessage) and not last.tool_calls else ""
        question = next((m.text for m in reversed(state["messages"]) if isinstance(m, HumanMessage)), "")
        note, closing = "", []
        if isinstance(last, AIMessage) and last.tool_calls:
            note = REPEAT_NOTE if _repeats(state["messages"]) else LIMIT_NOTE.format(max_steps=max_steps)
        elif state.get("retries") and not prose:
            note = "the policy did not produce a valid tool call or an answer."
        answer = compose_answer(prose, steps, question, note, store.root)
        if isinstance(last, AIMessage) and last.tool_calls:
            # Every tool call needs a reply, or the thread is invalid for OpenAI-style backends on the next turn.
            closing = [
                ToolMessage(f"not run: {note}", name=c["name"], tool_call_id=c["id"], status="error")
                for c in last.tool_calls
            ]
            closing.append(AIMessage(answer.split("\n", 1)[0]))  # the lead only: what the policy should imitate
        return {"answer": answer, "messages": closing}

    graph = StateGraph(AgentState)
    graph.add_node("policy", policy_node)
    graph.add_node("tools", tools_node)
    graph.add_node("answer", answer_node)
    graph.add_edge(START, "policy")
    graph.add_conditional_edges("policy", route, {"tools": "tools", "policy": "policy", "answer": "answer"})
    graph.add_edge("tools", "policy")
    graph.add_edge("answer", END)
    return graph.compile(checkpointer=checkpointer)


MAX_QUESTION = 2000  # characters; a pasted report beyond this would crowd the tools out of a small model's context


def new_thread_id() -> str:
    return f"thread-{uuid.uuid4().hex[:12]}"


def checked_question(question: str) -> tuple[str, str]:
    """(the question to ask, a note when it was cut); an empty question is refused."""
    question = (question or "").strip()
    if not question:
        raise CaseError(None, "the question is empty; ask something about the scan")
    if len(question) <= MAX_QUESTION:
        return question, ""
    return question[:MAX_QUESTION], f"Your question was cut to its first {MAX_QUESTION} of {len(question)} characters."


def call_key(call: dict) -> str:
    """A call's identity for spotting repeats: its name and its arguments in key order."""
    return call["name"] + json.dumps(call.get("args") or {}, sort_keys=True)


def _repeats(messages: list) -> bool:
    """The last message only repeats calls already made in this turn: a loop, so answer from what we have."""
    start = max(i for i, m in enumerate(messages) if isinstance(m, HumanMessage))
    earlier = {call_key(c) for m in messages[start:-1] if isinstance(m, AIMessage) for c in m.tool_calls}
    calls = messages[-1].tool_calls
    return bool(calls) and all(call_key(c) in earlier for c in calls)


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
        lines.append("\nFindings (from tools):")
        for i, s in enumerate(steps, 1):
            args = ", ".join(f"{k}={v}" for k, v in s.args.items() if v is not None)
            outcome = s.summary if s.ok else f"FAILED: {s.error}"
            shown = [str(Path(artifacts).resolve() / o) if artifacts is not None else o for o in s.outputs]
            arts = f" [artifacts: {', '.join(shown)}]" if s.outputs else ""
            lines.append(f"  {i}. {s.tool}({args}): {outcome}{arts}")
    return "\n".join(lines).strip()


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= max(0.005 * abs(b), 0.051)


class Agent:
    """Runs turns of the graph on a case within persistent threads, recording each turn's trajectory."""

    def __init__(
        self,
        policy: BaseChatModel,
        policy_id: str,
        registry: Registry | None = None,
        home: Home | None = None,
        max_steps: int = MAX_STEPS,
        memory: bool = True,
        cache: bool = True,
    ):
        """``memory``: give the policy hints from similar verified cases in the home's image memory, when it has any;
        ``cache``: reuse results of deterministic tools kept under the home's artifacts."""
        self.home = (home or Home.current()).ensure()
        self.policy_id = policy_id
        self.registry = registry or load_composites(Registry.default(), self.home)
        self.use_memory = memory
        self._memory = None
        self.trajectories = TrajectoryStore(self.home.trajectories_db)
        from langgraph.checkpoint.sqlite import SqliteSaver

        conn = sqlite3.connect(self.home.threads_db, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        self.checkpointer = SqliteSaver(conn)
        self.policy = policy
        self.max_steps = max_steps
        self.cache = cache
        self.sessions: dict[str, dict] = {}

    def thread_case(self, thread_id: str) -> dict | None:
        snapshot = self._graph(ArtifactStore(self.home.artifacts)).get_state({"configurable": {"thread_id": thread_id}})
        return snapshot.values.get("case") if snapshot and snapshot.values else None

    def _graph(self, store: ArtifactStore):
        return build_graph(
            self.policy, self.registry, store, self.max_steps, self.checkpointer, self.sessions, self.cache
        )

    def hints(self, case: Case, family: str) -> list[str]:
        if not self.use_memory or not self.home.memory.exists():
            return []
        from macro.agent.experience import hints_for
        from macro.memory.store import ImageMemory

        if self._memory is None:  # one instance: it reloads its file only when another process has changed it
            self._memory = ImageMemory(self.home.memory)
        try:
            return hints_for(case, family, self._memory)
        except Exception as exc:  # hints are advice: a damaged memory costs them, never the turn
            logging.getLogger("macro").warning(f"warning: no memory hints this turn, the memory is unusable ({exc})")
            return []

    def stream(
        self, case: Case | None, question: str, thread_id: str | None = None, family: str = ""
    ) -> Iterator[tuple[str, Any]]:
        """Yield ``("step", Step)`` as tools finish, then ``("done", TurnResult)``. ``family`` names the task family
        (a benchmark's); it defaults to the case's modality and scopes memory retrieval. Turns of one thread run one
        at a time, across processes: two concurrent turns would each extend the same checkpoint and one would be
        lost."""
        question, cut = checked_question(question)
        thread_id = thread_id or new_thread_id()
        digest = hashlib.sha256(thread_id.encode()).hexdigest()[:24]  # any thread id, a safe file name
        with locked_file(self.home.root / "locks" / f"thread-{digest}.lock"):  # one turn at a time per thread
            yield from self._turn(case, question, cut, thread_id, family)

    def _turn(self, case: Case | None, question: str, cut: str, thread_id: str, family: str):
        case = share_case(case) if case is not None else None  # the graph's steps reuse it: one decode per turn
        config = {"configurable": {"thread_id": thread_id}, "recursion_limit": 4 * self.max_steps + 10}
        case_ref = case.ref() if case is not None else self.thread_case(thread_id)
        if case_ref is None:
            raise CaseError(None, f"thread {thread_id!r} has no scan yet; give one")
        store = ArtifactStore(self.home.artifacts)
        graph = self._graph(store)
        start = time.perf_counter()
        final: dict = {}
        case_obj = load_case_ref(case_ref)
        family = family or case_obj.modality
        inputs = {
            "messages": [HumanMessage(question)],
            "case": case_ref,
            "steps": None,
            "retries": None,
            "answer": "",
            "hints": self.hints(case_obj, family),
        }
        for update in graph.stream(inputs, config, stream_mode="updates"):
            for node, values in update.items():
                for step in (values or {}).get("steps", []) if node == "tools" else []:
                    yield "step", Step(**step)
                if node == "answer":
                    final = values
        state = graph.get_state(config).values
        steps = state.get("steps", [])
        traj = Trajectory(
            question=question,
            case_id=case_obj.id,
            steps=steps,
            answer=final.get("answer", "") + (f"\n({cut})" if cut else ""),
            policy_id=self.policy_id,
            thread_id=thread_id,
            case_ref=case_ref,
            family=family,
            format_errors=state.get("retries", []),
            ms=(time.perf_counter() - start) * 1000,
            tool_versions={s["tool"]: s["version"] for s in steps if s.get("version")},
        )
        self.trajectories.add(traj)
        yield "done", TurnResult(traj.answer, thread_id, traj)

    def ask(
        self,
        case: Case | None,
        question: str,
        thread_id: str | None = None,
        on_step: Callable[[Step], None] | None = None,
        family: str = "",
    ) -> TurnResult:
        for kind, payload in self.stream(case, question, thread_id, family):
            if kind == "step" and on_step is not None:
                on_step(payload)
            elif kind == "done":
                return payload
        raise RuntimeError("agent turn ended without an answer")
