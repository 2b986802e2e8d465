"""Agent overhead per tool call, and the embedded policy's generation speed on this CPU.

Overhead = (time of a one-call agent turn with the scripted policy, result cache off) − (time of the same tool
called directly), both on the demo case, after one warm-up; the same turn answered from the result cache is
reported beside it. The agent side includes the graph, argument validation, the SQLite
checkpoint and the trajectory write: everything a real turn pays apart from the policy's own thinking.

The embedded policy's part: token and forward-pass figures for one first call on the demo case, then what a user
waits for, p50/p95 seconds per decision and per whole turn on the hand-written held-out requests.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from macro.config import Home
from macro.metrics import p50_p95

TOOL, ARGS, QUESTION = "measure_volume", {"region": "WT"}, "What is the whole tumour volume?"


def run_overhead(home: Home, calls: int = 40, tokens: bool = True, episodes: int = 12) -> dict:
    from macro.agent.graph import Agent
    from macro.agent.scripted import ScriptedPolicy
    from macro.artifacts import ArtifactStore
    from macro.case import load_case
    from macro.data import demo_case
    from macro.tools.base import ToolContext
    from macro.tools.registry import Registry

    case = load_case(demo_case(home.data))
    registry = Registry.default()
    tool = registry.get(TOOL)
    with tempfile.TemporaryDirectory(prefix="macro-overhead-") as tmp:
        bench_home = Home(Path(tmp))
        store = ArtifactStore(bench_home.artifacts)
        direct = []
        for _ in range(calls + 1):
            ctx = ToolContext(case=case, store=store)
            start = time.perf_counter()
            tool.execute(ctx, tool.args_schema(**ARGS))
            direct.append((time.perf_counter() - start) * 1000)
        plan = ScriptedPolicy(plan=[{"name": TOOL, "args": ARGS}])
        timings = {}
        for cache in (False, True):  # the tool run every time, like the direct call; then its cached result
            agent = Agent(plan, "scripted", registry=registry, home=bench_home, cache=cache)
            timings[cache] = []
            for _ in range(calls + 1):
                start = time.perf_counter()
                agent.ask(case, QUESTION)
                timings[cache].append((time.perf_counter() - start) * 1000)
    direct, through, cached = direct[1:], timings[False][1:], timings[True][1:]
    report = {
        "tool": TOOL,
        "case": case.id,
        "calls": calls,
        "direct_ms": p50_p95(direct),
        "agent_ms": p50_p95(through),
        "overhead_ms": p50_p95([a - d for a, d in zip(through, direct)]),
        "agent_cached_ms": p50_p95(cached),
    }
    if tokens:
        report["embedded"] = embedded_speed(home, case)
        report["embedded"].update(embedded_latency(home, episodes))
    return report


def embedded_speed(home: Home, case, repeats: int = 3) -> dict:
    """Median over repeats of one first-call generation (greedy) by the embedded policy with its adapter."""
    from langchain_core.messages import HumanMessage

    from macro.agent.policy import make_policy
    from macro.agent.prompts import system_message
    from macro.tools.registry import Registry

    policy, policy_id = make_policy("embedded", home)
    bound = policy.bind_tools(Registry.default().for_case(case))
    messages = [system_message(case.summary()), HumanMessage(QUESTION)]
    bound.invoke(messages)
    runs = [bound.invoke(messages).response_metadata for _ in range(repeats)]
    seconds = statistics.median(r["seconds"] for r in runs)
    prefill = _prefill_seconds(policy, messages, bound)
    new = statistics.median(r["new_tokens"] for r in runs)
    forwards = statistics.median(r["forward_passes"] for r in runs)
    return {
        "policy": policy_id,
        "prompt_tokens": runs[0]["prompt_tokens"],
        "new_tokens": new,
        "forward_passes": forwards,
        "seconds_per_call": seconds,
        "tokens_per_s": new / seconds,
        "prefill_seconds": prefill,
        "prefill_tokens_per_s": runs[0]["prompt_tokens"] / prefill,
        "decode_tokens_per_s": (new - 1) / max(seconds - prefill, 1e-6),
        "ms_per_forward_pass": 1000 * (seconds - prefill) / max(forwards - 1, 1),
        "grammar_ms_per_token": 1000 * statistics.median(r["grammar_seconds"] / max(r["new_tokens"], 1) for r in runs),
    }


def _prefill_seconds(policy, messages, bound) -> float:
    """Time to the first new token (prompt processing), measured with a one-token generation."""
    limit = policy.max_new_tokens
    policy.max_new_tokens = 1
    try:
        return statistics.median(bound.invoke(messages).response_metadata["seconds"] for _ in range(3))
    finally:
        policy.max_new_tokens = limit


def embedded_latency(home: Home, episodes: int) -> dict:
    """What a user waits for with the embedded policy: seconds per first decision over every hand-written held-out
    request, and per whole turn (tools and answer included) over ``episodes`` of them spread across the file."""
    from macro.agent.graph import Agent
    from macro.agent.policy import make_policy
    from macro.eval.policy import Cases, evaluate_episodes, evaluate_first_calls, load_requests

    rows = load_requests()
    policy, policy_id = make_policy("embedded", home)
    cases = Cases(home.data / "policy-eval")
    decisions = evaluate_first_calls(policy, rows, cases)
    spread = rows[:: max(len(rows) // max(episodes, 1), 1)][:episodes]
    with tempfile.TemporaryDirectory(prefix="macro-overhead-") as scratch:
        agent = Agent(policy, policy_id, home=Home(Path(scratch)), memory=False)
        turns = evaluate_episodes(agent, spread, cases)
    return {
        "decisions": decisions["n"],
        "decision_seconds": decisions["decision_seconds"],
        "episodes": turns["n"],
        "episode_seconds": turns["episode_seconds"],
    }
