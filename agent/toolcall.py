"""The one tool-call format for local models: Hermes/Qwen-style ``<tool_call>{json}</tool_call>``.

Parsing is forgiving about what small models get wrong (a missing closing tag, text around the call, ``args`` or
``parameters`` instead of ``arguments``, a trailing brace too many) and strict about what matters: a string
``name`` and an object of arguments. Anything else is reported as an error string for a retry message.
"""

from __future__ import annotations

import json
import re
import uuid

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)(?:" + re.escape(CLOSE) + r"|$)", re.S)


def format_call(name: str, arguments: dict) -> str:
    return f"{OPEN}{json.dumps({'name': name, 'arguments': arguments}, separators=(', ', ': '))}{CLOSE}"


def parse_calls(text: str) -> tuple[list[dict], list[str]]:
    """Return (calls as langchain tool_call dicts, error messages). Plain text gives ([], [])."""
    calls, errors = [], []
    blocks = _BLOCK.findall(text)
    if not blocks and text.lstrip().startswith("{") and '"name"' in text:
        blocks = [text]
    for raw in blocks:
        obj = _first_json_object(raw)
        if obj is None:
            errors.append(f"could not read JSON inside {OPEN}: {raw.strip()[:120]!r}")
            continue
        name = obj.get("name")
        args = obj.get("arguments", obj.get("args", obj.get("parameters", {})))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                pass
        if not isinstance(name, str) or not name:
            errors.append(f"tool call without a tool name: {raw.strip()[:120]!r}")
        elif not isinstance(args, dict):
            errors.append(f"arguments of {name} must be a JSON object")
        else:
            calls.append({"name": name, "args": args, "id": f"call_{uuid.uuid4().hex[:10]}", "type": "tool_call"})
    return calls, errors


def _first_json_object(raw: str) -> dict | None:
    start = raw.find("{")
    if start < 0:
        return None
    try:
        obj, _ = json.JSONDecoder().raw_decode(raw[start:])
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


INT64 = 2**63
MAX_TEXT = 4096


def unstorable(value, where: str = "arguments") -> str | None:
    """Why a call's arguments cannot be kept in a thread's checkpoint (an integer beyond 64 bits, a non-finite
    number, a string of more than :data:`MAX_TEXT` characters, a non-JSON value), or None. Any backend may write
    them (an unconstrained remote model, a scripted plan); refused here, they become a retry, not a lost turn."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return None if -INT64 <= value < INT64 else f"{where} is an integer beyond 64 bits"
    if isinstance(value, float):
        return None if value == value and abs(value) != float("inf") else f"{where} is not a finite number"
    if isinstance(value, str):
        return None if len(value) <= MAX_TEXT else f"{where} is longer than {MAX_TEXT} characters"
    if isinstance(value, dict):
        return next((why for k, v in value.items() if (why := unstorable(v, f"{where}.{k}"))), None)
    if isinstance(value, list):
        return next((why for i, v in enumerate(value) if (why := unstorable(v, f"{where}[{i}]"))), None)
    return f"{where} is a {type(value).__name__}, not a JSON value"
