"""What the web UI does, without the web: open a scan, ask in a thread, reopen a thread, judge a turn.

The Gradio layer (:mod:`macro.ui.app`) only wires these to widgets, so every behaviour here is tested in plain
Python and the browser test only has to prove the wiring. Threads, trajectories and verdicts are the CLI's own
(``macro chat --thread ID`` resumes a thread started in the browser and the other way round).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterator

from macro.agent.experience import record_verdict
from macro.agent.graph import Agent, new_thread_id
from macro.agent.loop import without_findings
from macro.agent.policy import make_policy
from macro.case import Case, load_case_ref
from macro.config import Home
from macro.errors import CaseError
from macro.tools.executor import Step
from macro.trajectory import TrajectoryStore
from macro.ui.scans import open_example, open_upload
from macro.ui.viewer import Overlay, pictures, reference_overlay, tool_overlays

POLICIES = ["embedded", "embedded:sft", "scripted"]


@dataclass
class Session:
    """One browser tab's scan, thread and the artifacts the thread's tools wrote (oldest first)."""

    case: Case | None = None
    thread_id: str = ""
    artifacts: list[str] = field(default_factory=list)
    _layers: tuple = field(default=(None, None), repr=False, compare=False)  # (key, layers): see layers()

    def layers(self, home: Home) -> tuple[dict[str, Overlay], list[str]]:
        """Overlay name -> layer (the reference mask first, then the tools' masks and heatmaps) and notes on
        outputs that cannot be overlaid. Kept until the scan or the artifacts change: every move of a viewer
        control redraws, and reading the NIfTI files again each time would make the slider lag."""
        if self.case is None:
            return {}, []
        key = (self.case.id, tuple(self.artifacts))
        if self._layers[0] != key:
            found, notes = tool_overlays(self.case, _store(home), self.artifacts)
            reference = reference_overlay(self.case)
            self._layers = (key, ({layer.name: layer for layer in ([reference] if reference else []) + found}, notes))
        return self._layers[1]

    def pictures(self, home: Home) -> list[tuple[str, str]]:
        return pictures(_store(home), self.artifacts)


def _store(home: Home):
    from macro.artifacts import ArtifactStore

    return ArtifactStore(home.artifacts)


def step_message(step) -> dict:
    """A finished tool call as a collapsible chat message: the call as title, its result inside, its time."""
    body = (step.headline or step.summary) if step.ok else f"Failed: {step.error}"
    status = "" if step.ok else " (failed)"
    return {
        "role": "assistant",
        "content": body,
        "metadata": {
            "title": f"Tool: {step.call}{status}",
            "duration": round(step.ms / 1000, 2),
            "status": "done",
        },
    }


class Workbench:
    """The agents (one per policy, loaded on first use) and the stores of one MACRO_HOME."""

    def __init__(self, home: Home | None = None, max_steps: int = 6):
        self.home = (home or Home.current()).ensure()
        self.max_steps = max_steps
        self._agents: dict[str, Agent] = {}
        self._lock = threading.Lock()

    def agent(self, policy: str) -> Agent:
        with self._lock:
            if policy not in self._agents:
                chat, policy_id = make_policy(policy)
                self._agents[policy] = Agent(chat, policy_id, home=self.home, max_steps=self.max_steps)
            return self._agents[policy]

    def loaded(self, policy: str) -> bool:
        return policy in self._agents

    def open_example(self, label: str) -> Session:
        return Session(open_example(label, self.home), new_thread_id())

    def new_thread(self, case: Case) -> Session:
        return Session(case, new_thread_id())

    def open_upload(self, paths: list[str], modality: str | None = None) -> Session:
        return Session(open_upload(paths, self.home, modality), new_thread_id())

    def threads(self) -> list[tuple[str, str]]:
        """``(label, thread id)`` of the recorded threads, the most recent first."""
        rows = TrajectoryStore(self.home.trajectories_db).threads()
        return [
            (
                f"{datetime.fromtimestamp(r['last']):%Y-%m-%d %H:%M} · {r['modality'] or '?'} · "
                f"{r['question'][:48]} · {r['turns']} turn(s)",
                r["thread_id"],
            )
            for r in rows
        ]

    def reopen(self, thread_id: str) -> tuple[Session, list[dict]]:
        """A recorded thread: its scan (when its location is stored), its artifacts and its chat so far."""
        turns = TrajectoryStore(self.home.trajectories_db).list(thread_id=thread_id)
        if not turns:
            raise CaseError(None, f"no recorded turns for thread {thread_id!r}")
        case = load_case_ref(turns[-1].case_ref)
        messages, artifacts = [], []
        for turn in turns:
            messages.append({"role": "user", "content": turn.question})
            for raw in turn.steps:
                step = Step(**raw)
                messages.append(step_message(step))
                artifacts += step.outputs
            messages.append({"role": "assistant", "content": without_findings(turn.answer)})
        return Session(case, thread_id, artifacts), messages

    def ask(self, session: Session, question: str, policy: str) -> Iterator[tuple[str, object]]:
        """Yield ``("step", chat message)`` as tools finish, then ``("answer", text)`` (its lead and caveats: the steps
        show the tools' results); the session's artifacts grow with each step. The scan goes with the first turn of
        a thread only, as in ``macro chat``."""
        if session.case is None:
            raise CaseError(None, "open a scan first (an example or an upload)")
        agent = self.agent(policy)
        first = not TrajectoryStore(self.home.trajectories_db).list(thread_id=session.thread_id, limit=1)
        for kind, payload in agent.stream(session.case if first else None, question, session.thread_id):
            if kind == "step":
                session.artifacts += payload.outputs
                yield "step", step_message(payload)
            else:
                yield "answer", without_findings(payload.answer)

    def judge(self, session: Session, good: bool, note: str = "") -> str:
        """Record a person's verdict on the thread's last turn, as ``macro feedback`` does."""
        from macro.memory.store import ImageMemory

        turns = TrajectoryStore(self.home.trajectories_db).list(thread_id=session.thread_id)
        if not turns:
            raise CaseError(None, "nothing to judge yet: ask a question first")
        done = record_verdict(
            turns[-1].id,
            "verified" if good else "failed",
            "person",
            note,
            self.home,
            memory=ImageMemory(self.home.memory),
            case=session.case,
        )
        return f"Recorded: {done.verification}" + (" (remembered in the image memory)" if done.embedding_id else "")
