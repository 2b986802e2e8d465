"""How well a policy calls tools on requests written apart from its training data.

The held-out requests (``eval/data/policy_requests.jsonl``) were written by hand, not by the SFT generator, in
six users' styles (clinician, layperson, terse, typos, another language, verbose), and cover every built-in atomic
tool on the example cases the tools' specs name. Each row gives the right *first* call: on a case without a mask
a volume question starts with a segmentation.

Two figures, both through the deployed path (``bind_tools`` + ``invoke`` with the agent's system message, or the
whole agent): the first decision (parseable, schema-valid, right tool, exact arguments, per tool), and whole
episodes (the turn ends in an answer with no failed call, no repeated call and no loop-guard stop).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage
from pydantic import ValidationError

from macro.agent.graph import Agent
from macro.agent.loop import STOP_NOTES, call_key, decide
from macro.agent.prompts import system_message
from macro.case import Case
from macro.data import example_case
from macro.errors import CaseError
from macro.metrics import p50_p95
from macro.stats import proportion_ci
from macro.tools.executor import INJECTED_NAMES
from macro.tools.registry import Registry

REQUESTS = Path(__file__).parent / "data" / "policy_requests.jsonl"
FIRST_CALL_KEYS = ("parseable", "valid", "right_tool", "exact_args")


def load_requests(path: Path = REQUESTS) -> list[dict]:
    """Rows ``{"request", "case", "tool", "args", "style"}``; a malformed line is reported with its number."""
    rows = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise CaseError(Path(path), f"line {number}: not JSON ({exc})") from None
        missing = [k for k in ("request", "case", "tool") if not isinstance(row, dict) or k not in row]
        if missing:
            raise CaseError(Path(path), f"line {number}: a request row needs {', '.join(missing)}")
        rows.append(row)
    return rows


class Cases:
    """Example cases by name, built once under ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self._cases: dict[str, Case] = {}

    def __call__(self, name: str) -> Case:
        if name not in self._cases:
            self._cases[name] = example_case(name, self.root)
        return self._cases[name]


def _score_call(call: dict | None, row: dict, registry: Registry, offered: set[str]) -> dict:
    parsed = None
    if call is not None and call["name"] in offered:
        try:
            parsed = registry.get(call["name"]).args_schema(
                **{k: v for k, v in call["args"].items() if k not in INJECTED_NAMES}
            )
        except (ValidationError, TypeError):
            parsed = None
    right_tool = call is not None and call["name"] == row["tool"]
    gold = registry.get(row["tool"]).args_schema(**row.get("args", {})).model_dump()
    return {
        "parseable": call is not None,
        "valid": parsed is not None,
        "right_tool": right_tool,
        "exact_args": bool(parsed is not None and right_tool and parsed.model_dump() == gold),
    }


def _percent(rows: Sequence[dict], keys: Sequence[str]) -> dict:
    count = max(len(rows), 1)
    return {k: round(100.0 * sum(bool(r[k]) for r in rows) / count, 1) for k in keys}


def _interval(rows: Sequence[dict], keys: Sequence[str]) -> dict:
    """Each figure's 95 % Wilson interval in points over these requests: decoding is greedy, so there are no seeds
    to average, and the requests are the sample."""
    if not rows:
        return {}
    return {k: [round(100.0 * b, 1) for b in proportion_ci(sum(bool(r[k]) for r in rows), len(rows))] for k in keys}


def evaluate_first_calls(
    policy: BaseChatModel,
    rows: Sequence[dict],
    cases: Cases,
    registry: Registry | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """The first decision on each request: overall and per-tool percentages, seconds per decision, every row."""
    registry = registry or Registry.default()
    results = []
    for i, row in enumerate(rows):
        case = cases(row["case"])
        ai = decide(policy, registry, case, [system_message(case.summary()), HumanMessage(row["request"])])
        call = ai.tool_calls[0] if ai.tool_calls else None
        scores = _score_call(call, row, registry, {t.name for t in registry.for_case(case)})
        results.append(
            {
                **{k: row[k] for k in ("request", "case", "tool", "style") if k in row},
                "gold_args": row.get("args", {}),
                "call": call and {"name": call["name"], "args": call["args"]},
                **scores,
                "raw": ai.response_metadata.get("raw", ai.text),
                "seconds": ai.response_metadata.get("seconds"),
            }
        )
        if progress:
            progress(i + 1, len(rows))
    by_tool, by_style = defaultdict(list), defaultdict(list)
    for r in results:
        by_tool[r["tool"]].append(r)
        by_style[r.get("style", "")].append(r)
    return {
        "n": len(results),
        **_percent(results, FIRST_CALL_KEYS),
        "ci": _interval(results, FIRST_CALL_KEYS),
        "per_tool": {tool: {"n": len(rs), **_percent(rs, FIRST_CALL_KEYS)} for tool, rs in sorted(by_tool.items())},
        "per_style": {s: {"n": len(rs), **_percent(rs, FIRST_CALL_KEYS)} for s, rs in sorted(by_style.items()) if s},
        "decision_seconds": p50_p95([r["seconds"] for r in results if r["seconds"] is not None]),
        "rows": results,
    }


def clean_episode(steps: Sequence[dict], answer: str, format_errors: Sequence[str]) -> dict:
    """Whether a turn ended in an answer with no failed call, no repeated call and no loop-guard stop."""
    keys = [call_key({"name": s["tool"], "args": s.get("args")}) for s in steps]
    verdict = {
        "failed_calls": sum(not s["ok"] for s in steps),
        "repeated_calls": len(keys) - len(set(keys)),
        "guard_stop": any(note in answer for note in STOP_NOTES),
        "format_errors": len(format_errors),
    }
    verdict["clean"] = not any(verdict.values())
    return verdict


def evaluate_episodes(
    agent: Agent, rows: Sequence[dict], cases: Cases, progress: Callable[[int, int], None] | None = None
) -> dict:
    """Each request as a whole agent turn on its case (a fresh thread each)."""
    results = []
    for i, row in enumerate(rows):
        turn = agent.ask(cases(row["case"]), row["request"])
        traj = turn.trajectory
        verdict = clean_episode(traj.steps, traj.answer, traj.format_errors)
        results.append(
            {
                "request": row["request"],
                "tool": row["tool"],
                "calls": [s["tool"] for s in traj.steps],
                "first_line": traj.answer.split("\n", 1)[0],
                "seconds": traj.ms / 1000,
                **verdict,
            }
        )
        if progress:
            progress(i + 1, len(rows))
    return {
        "n": len(results),
        **_percent(results, ("clean",)),
        "clean_ci": _interval(results, ("clean",)).get("clean"),
        "failed_calls": sum(r["failed_calls"] for r in results),
        "repeated_calls": sum(r["repeated_calls"] for r in results),
        "guard_stops": sum(r["guard_stop"] for r in results),
        "episode_seconds": p50_p95([r["seconds"] for r in results]),
        "rows": results,
    }
