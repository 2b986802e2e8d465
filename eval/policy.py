"""How well a policy picks its first tool call on held-out requests (wording never seen in SFT training).

Works for any backend: each request goes through ``bind_tools`` + ``invoke`` with the same system message the
agent uses, so the figure measures the deployed path, not a shortcut.
"""

from __future__ import annotations

import random
import time
from typing import Callable, Sequence

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage
from pydantic import ValidationError

from macro.agent.prompts import system_message
from macro.case import load_case_ref
from macro.tools.executor import INJECTED_NAMES
from macro.tools.registry import Registry


def evaluate_first_calls(
    policy: BaseChatModel,
    rows: Sequence[dict],
    n: int = 50,
    seed: int = 0,
    registry: Registry | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    registry = registry or Registry.default()
    rows = [r for r in rows if r["kind"] == "first_call"]
    picked = random.Random(seed).sample(rows, min(n, len(rows)))
    results = []
    start = time.perf_counter()
    for i, row in enumerate(picked):
        case = load_case_ref(row["case_ref"])
        tools = registry.for_case(case)
        ai = policy.bind_tools(tools).invoke([system_message(case.summary()), HumanMessage(row["user"])])
        call = ai.tool_calls[0] if ai.tool_calls else None
        parsed = None
        if call is not None and call["name"] in {t.name for t in tools}:
            schema = registry.get(call["name"]).args_schema
            try:
                parsed = schema(**{k: v for k, v in call["args"].items() if k not in INJECTED_NAMES})
            except (ValidationError, TypeError):
                parsed = None
        valid = parsed is not None
        right_tool = call is not None and call["name"] == row["tool"]
        gold = registry.get(row["tool"]).args_schema(**row["args"]).model_dump()
        exact = bool(valid and right_tool and parsed.model_dump() == gold)
        results.append(
            {
                "user": row["user"],
                "gold_tool": row["tool"],
                "gold_args": row["args"],
                "call": call and {"name": call["name"], "args": call["args"]},
                "parseable": call is not None,
                "valid": valid,
                "right_tool": right_tool,
                "valid_right_tool": valid and right_tool,
                "exact_args": exact,
                "raw": ai.response_metadata.get("raw", ai.text),
            }
        )
        if progress:
            progress(i + 1, len(picked))
    count = max(len(results), 1)
    summary = {
        k: round(100.0 * sum(r[k] for r in results) / count, 1)
        for k in ("parseable", "valid", "right_tool", "valid_right_tool", "exact_args")
    }
    return {
        "n": len(results),
        **summary,
        "seconds_per_prompt": round((time.perf_counter() - start) / count, 2),
        "rows": results,
    }
