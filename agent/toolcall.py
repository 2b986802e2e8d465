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
