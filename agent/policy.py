"""Policy backends by name: ``embedded`` (SmolLM2 with the GRPO adapter when it continues the SFT adapter in use,
else the SFT adapter), ``embedded:sft`` (the SFT adapter only), ``hf:PATH``, ``openai:URL``, ``scripted`` or
``scripted:PLAN.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from langchain_core.language_models import BaseChatModel

from macro import weights
from macro.agent.local_llm import ADAPTER, GRPO_ADAPTER, LocalChatModel, embedded_base, grpo_in_use
from macro.agent.scripted import ScriptedPolicy
from macro.agent.toolcall import unstorable
from macro.config import Home
from macro.errors import CaseError, ModelUnavailable

BACKENDS = "embedded, embedded:sft, hf:PATH, openai:URL, scripted, scripted:PLAN.json"


PLAN_FORMAT = 'a JSON list of calls, each {"name": TOOL, "args": {...}}'


def read_plan(path: Path) -> list[dict]:
    """A scripted plan, checked before the first turn: a plan that cannot be run is a bad input file, not a crash."""
    try:
        plan = json.loads(path.read_text())
    except OSError as exc:
        raise CaseError(path, f"cannot read the scripted plan ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise CaseError(path, f"the scripted plan is not JSON ({exc})", accepted=PLAN_FORMAT) from None
    if not isinstance(plan, list):
        raise CaseError(path, f"the scripted plan is a {type(plan).__name__}, not a list", accepted=PLAN_FORMAT)
    for i, call in enumerate(plan):
        problem = (
            "is not an object"
            if not isinstance(call, dict)
            else "has no string name"
            if not isinstance(call.get("name"), str)
            else "has args that are not an object"
            if not isinstance(call.get("args", {}), dict)
            else unstorable(call.get("args", {}), "args")
        )
        if problem:
            raise CaseError(path, f"call {i} of the scripted plan {problem}", accepted=PLAN_FORMAT)
    return plan


def make_policy(
    spec: str, home: Home | None = None, model: str | None = None, constrained: bool = True
) -> tuple[BaseChatModel, str]:
    """Return (chat model, policy id). The id names weights precisely enough to reproduce a trajectory, and says
    when a local model decodes without its grammar (``constrained=False``, for comparisons)."""
    free = "" if constrained else "(unconstrained)"
    if spec == "scripted":
        return ScriptedPolicy(), "scripted"
    if spec.startswith("scripted:"):
        path = Path(spec.split(":", 1)[1])
        return ScriptedPolicy(plan=read_plan(path)), f"scripted:{path.name}"
    if spec in ("embedded", "embedded:sft"):
        slot = GRPO_ADAPTER if spec == "embedded" and grpo_in_use(home) else ADAPTER  # SFT, then GRPO
        folder = slot.active(home)
        if not (folder / weights.MANIFEST).is_file():
            pid = "embedded:smollm2-135m(no adapter)" + free
            return LocalChatModel(model_path=str(embedded_base(home)), policy_id=pid, constrained=constrained), pid
        digest = weights.verify(folder, slot.regenerate)["sha256"][:8]  # a damaged adapter fails here, not mid-turn
        kind = "grpo-lora" if slot is GRPO_ADAPTER else "lora"
        pid = f"embedded:smollm2-135m+{kind}-{digest}{free}"
        chat = LocalChatModel(
            model_path=str(embedded_base(home)), adapter=str(folder), policy_id=pid, constrained=constrained
        )
        return chat, pid
    if spec.startswith("hf:"):
        path = Path(spec[3:]).expanduser()
        if not (path / "config.json").is_file():
            raise ModelUnavailable(f"{path}: not a transformers model folder (no config.json)")
        return LocalChatModel(model_path=str(path), policy_id=spec + free, constrained=constrained), spec + free
    if spec.startswith("openai:"):
        from langchain_openai import ChatOpenAI

        name = model or os.environ.get("MACRO_OPENAI_MODEL", "default")
        chat = ChatOpenAI(  # one retry and a bounded wait: an unreachable server is reported in seconds
            base_url=spec[len("openai:") :],
            model=name,
            api_key=os.environ.get("OPENAI_API_KEY", "none"),
            temperature=0,
            max_retries=1,
            timeout=120,
        )
        return chat, f"{spec}#{name}"
    raise ModelUnavailable(f"unknown policy {spec!r}; choose one of: {BACKENDS}")
