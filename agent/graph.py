"""The agent: a LangGraph ``StateGraph`` of policy → tools → … → answer, with threads in SQLite.

One turn: the policy proposes a call; the executor validates and runs it (errors go back as tool messages);
this repeats until the policy answers in prose, or the step limit is hit. The answer node then writes the final
answer: the policy's prose only if it quotes the answering tool's sentence and every number in it comes from a tool
result or the question, followed by a findings block built from the trajectory. Every turn is recorded as a
:class:`~macro.trajectory.Trajectory`.
"""

from __future__ import annotations

import hashlib
import logging
import operator
import sqlite3
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Iterator, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from macro.agent.loop import (
    MAX_STEPS,
    decide,
    final_answer,
    format_error,
    next_node,
    retry_message,
    storable,
)
from macro.agent.prompts import system_message
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
        error = format_error(ai)
        if not error:
            return {"messages": [ai]}
        return {"messages": [ai, retry_message(error)], "retries": [error]}

    def route(state: AgentState) -> str:
        return next_node(state["messages"], state.get("steps", []), state.get("retries", []), max_steps)

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
        messages, retries = state["messages"], state.get("retries", [])
        answer, note = final_answer(messages, state.get("steps", []), retries, max_steps, store.root)
        last, closing = messages[-1], []
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
