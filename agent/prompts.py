"""Prompts, kept compact because a 135M model on 2 cores pays for every token.

The same functions render conversations at run time and when generating SFT data, so the embedded policy is
trained on exactly the text it later sees. Only tools that accept the case are listed, one line each.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from macro.agent.toolcall import format_call

PREAMBLE = "You are MACRO, a medical imaging assistant. Never guess a measurement."
CALL_RULE = (
    'To use a tool reply with one <tool_call>{"name": ..., "arguments": {...}}</tool_call>. '
    "Once tool results answer the question, reply in plain text quoting them."
)


def system_message(case_summary: str, hints: Sequence[str] = ()) -> SystemMessage:
    lines = [PREAMBLE, f"Case: {case_summary}."]
    lines += [f"Hint: {h}" for h in hints]
    return SystemMessage("\n".join(lines))


def tool_line(schema: dict, first: Sequence[str] = ()) -> str:
    """``- name(arg: a|b = a, n: int): description`` from an OpenAI-style function schema; ``first`` names the calls
    that must run before this tool can (its input does not exist yet), said at the end of the line."""
    fn = schema.get("function", schema)
    params = []
    for arg, prop in (fn.get("parameters") or {}).get("properties", {}).items():
        prop = _collapse(prop)
        kind = "|".join(map(str, prop["enum"])) if "enum" in prop else prop.get("type", "any")
        default = f" = {json.dumps(prop['default'])}" if prop.get("default") is not None else ""
        params.append(f"{arg}: {kind}{default}")
    line = f"- {fn['name']}({', '.join(params)}): {fn.get('description', '')}"
    return line + (f" First run: {', '.join(first)}." if first else "")


def _collapse(prop: dict) -> dict:
    """pydantic writes ``X | None`` as anyOf; show the non-null branch."""
    for branch in prop.get("anyOf", []):
        if branch.get("type") != "null":
            return {**branch, **{k: v for k, v in prop.items() if k != "anyOf"}}
    return prop


def to_chat(
    messages: Sequence[BaseMessage], tools: Sequence[dict] | None, waiting: Mapping[str, Sequence[str]] | None = None
) -> list[dict[str, Any]]:
    """LangChain messages -> role/content dicts in the local tool-call format, tools inside the system turn.
    ``waiting`` maps an offered tool whose input does not exist yet to the calls that make it (shown on its line)."""
    waiting = waiting or {}
    chat: list[dict[str, Any]] = []
    for msg in messages:
        if isinstance(msg, SystemMessage):
            content = msg.text
            if tools:
                lines = [tool_line(t, waiting.get(t.get("function", t)["name"], ())) for t in tools]
                content += "\nTools:\n" + "\n".join(lines) + "\n" + CALL_RULE
            chat.append({"role": "system", "content": content})
        elif isinstance(msg, HumanMessage):
            chat.append({"role": "user", "content": msg.text})
        elif isinstance(msg, AIMessage):
            calls = "".join(format_call(c["name"], c["args"]) for c in msg.tool_calls)
            chat.append({"role": "assistant", "content": calls or msg.text})
        elif isinstance(msg, ToolMessage):
            chat.append({"role": "tool", "content": f"{msg.name or 'tool'}: {msg.text}"})
    return chat
