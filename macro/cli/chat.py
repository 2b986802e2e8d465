"""Talking to the agent: ``ask``, ``chat``, ``demo``, and ``feedback`` (a person's verdict on a turn)."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from macro.cli.common import ModalityOpt, ModelOpt, PolicyOpt, app, err, load_scan, make_agent, print_step
from macro.config import Home
from macro.errors import CaseError


@app.command()
def ask(
    words: list[str] = typer.Argument(
        ...,
        metavar="[CASE] QUESTION",
        help="the scan (file, DICOM/BraTS folder, or four comma-separated NIfTI T1,T1ce,T2,FLAIR), then the "
        "question; with --thread the scan may be left out",
    ),
    policy: str = PolicyOpt,
    model: Optional[str] = ModelOpt,
    thread: Optional[str] = typer.Option(None, "--thread", help="continue this thread"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    modality: Optional[str] = ModalityOpt,
    max_steps: int = typer.Option(6, help="tool calls per turn"),
):
    """Ask one question about a scan, or about the scan of a thread (--thread)."""
    from macro.agent.graph import new_thread_id

    if len(words) > 2 or (len(words) == 1 and thread is None):
        raise CaseError(None, "give CASE QUESTION, or --thread ID QUESTION (quote a question of several words)")
    case, question = (None, words[0]) if len(words) == 1 else words
    scan = load_scan(case, modality) if case else None
    agent = make_agent(policy, model, max_steps)
    if scan is None and agent.thread_case(thread) is None:
        raise CaseError(None, f"thread {thread!r} has no scan; give CASE QUESTION")
    thread = thread or new_thread_id()
    err(f"thread {thread}")
    result = agent.ask(scan, question, thread_id=thread, on_step=print_step)
    if as_json:
        typer.echo(
            json.dumps(
                {"answer": result.answer, "thread_id": result.thread_id, "trajectory": result.trajectory.to_dict()},
                default=str,
            )
        )
    else:
        typer.echo(result.answer)
        err(f"thread {result.thread_id}; continue with --thread {result.thread_id}")


@app.command()
def chat(
    case: Optional[str] = typer.Argument(None, help="scan to talk about (optional when resuming a thread)"),
    policy: str = PolicyOpt,
    model: Optional[str] = ModelOpt,
    thread: Optional[str] = typer.Option(None, "--thread"),
    modality: Optional[str] = ModalityOpt,
    max_steps: int = typer.Option(6),
):
    """Chat about a scan; the thread persists, so `--thread ID` resumes after a restart. Reads stdin (pipeable)."""
    from macro.agent.graph import new_thread_id

    scan = load_scan(case, modality) if case else None
    agent = make_agent(policy, model, max_steps)
    if scan is None and (thread is None or agent.thread_case(thread) is None):
        raise CaseError(None, "give a scan, or --thread ID of a thread that has one")
    thread = thread or new_thread_id()
    err(f"thread {thread}; type a question, or /quit")
    while True:
        try:
            line = input("you> ") if sys.stdin.isatty() else sys.stdin.readline()
        except EOFError:
            break
        if not line or line.strip() in ("/quit", "/exit"):
            break
        if not line.strip():
            continue
        result = agent.ask(scan, line.strip(), thread_id=thread, on_step=print_step)
        scan = None
        typer.echo(f"macro> {result.answer}")
    err(f"thread {thread}; resume with: macro chat --thread {thread}")


@app.command()
def demo(policy: str = PolicyOpt, question: str = typer.Option("What is the tumour volume?", "--question")):
    """Build the demo brain MRI (once) and ask the agent about it."""
    from macro.data import demo_case

    home = Home.current().ensure()
    folder = demo_case(home.data)
    truth = json.loads((folder / "truth.json").read_text())
    err(f"demo case: {folder}")
    err(f"question: {question}")
    scan = load_scan(str(folder), None)
    agent = make_agent(policy, None, 6)
    result = agent.ask(scan, question, on_step=print_step)
    typer.echo(result.answer)
    gt = truth["volumes_ml"]
    typer.echo(
        f"\n(phantom ground truth: WT {gt['WT']:.2f} mL, TC {gt['TC']:.2f} mL, ET {gt['ET']:.2f} mL; "
        f"policy {agent.policy_id}; {len(result.trajectory.steps)} tool call(s))"
    )


@app.command()
def feedback(
    thread: str = typer.Argument(..., help="thread id printed by ask/chat"),
    verdict: str = typer.Argument(..., help="good | bad"),
    note: str = typer.Option("", "--note"),
    all_turns: bool = typer.Option(False, "--all", help="judge every turn, not only the last"),
    case: Optional[str] = typer.Option(
        None, "--case", help="the thread's scan, when its path is not stored (outside MACRO_CASE_ROOT)"
    ),
):
    """Judge a thread's answer: good runs become verified experience (memory, mining), bad ones count as failures."""
    from macro.agent.experience import record_verdict
    from macro.memory.store import ImageMemory
    from macro.trajectory import TrajectoryStore

    if verdict not in ("good", "bad"):
        raise CaseError(None, f"verdict must be good or bad, got {verdict!r}")
    home = Home.current().ensure()
    turns = TrajectoryStore(home.trajectories_db).list(thread_id=thread)
    if not turns:
        raise CaseError(None, f"no recorded turns for thread {thread!r}")
    memory = ImageMemory(home.memory)  # one handle for every turn judged (opening reads nothing until used)
    scan = load_scan(case, None) if case else None
    for traj in turns if all_turns else turns[-1:]:
        done = record_verdict(
            traj.id, "verified" if verdict == "good" else "failed", "person", note, home, memory=memory, case=scan
        )
        remembered = f" (memory entry {done.embedding_id})" if done.embedding_id else ""
        if verdict == "good" and not done.embedding_id and "path_sha256" in traj.case_ref and scan is None:
            remembered = " (not remembered: its scan's path is not stored; give it with --case CASE)"
        typer.echo(f"{done.id}: {done.verification}{remembered}")
