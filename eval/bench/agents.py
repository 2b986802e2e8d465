"""The agents MACRO-Bench compares, all on the same LLM: what differs is experience, not the model.

* ``static``: a fixed tool pipeline per task family (the family's chain, arguments from keyword rules); no LLM.
* ``react``: zero-shot tool calling with atomic tools only, no memory.
* ``react+memory``, ``react+composites``, ``react+memory+composites``: the same, plus hints from the image
  memory and/or the mined composites in the tool list.
* ``macro``: memory + composites + a GRPO-trained adapter; not run (and said so) while no GRPO adapter exists.

The LLM is the embedded policy unless ``--llm`` names another backend (``scripted`` is the keyword policy,
deterministic and fast, for CI slices and for separating the LLM's share of the result from the harness's).
"""

from __future__ import annotations

from dataclasses import dataclass

from macro.agent.scripted import ScriptedPolicy, keyword_args

STANDARD = ("static", "react", "react+memory", "react+composites", "react+memory+composites", "macro")


@dataclass(frozen=True)
class AgentSpec:
    name: str
    llm: str
    memory: bool = False
    composites: bool = False
    adapter: str | None = None
    static: bool = False


def specs(names: list[str], llm: str, grpo_adapter: str | None = None) -> tuple[list[AgentSpec], dict[str, str]]:
    """Agent specs for the names asked for, and the ones that cannot run with the reason."""
    out, skipped = [], {}
    for name in names:
        if name == "static":
            out.append(AgentSpec("static", "none", static=True))
        elif name == "macro":
            if grpo_adapter:
                out.append(AgentSpec("macro", llm, True, True, adapter=grpo_adapter))
            else:
                skipped["macro"] = (
                    "no GRPO adapter for this LLM (the shipped one is the embedded LLM's): pass --grpo-adapter PATH"
                )
        elif name.startswith("react"):
            parts = set(name.split("+")[1:])
            if parts - {"memory", "composites"}:
                raise ValueError(f"unknown agent {name!r}; choose from {', '.join(STANDARD)} or openai:URL / hf:PATH")
            out.append(AgentSpec(name, llm, "memory" in parts, "composites" in parts))
        elif name.startswith(("openai:", "hf:")):
            out.append(AgentSpec(f"react[{name}]", name))
            out.append(AgentSpec(f"react+memory+composites[{name}]", name, True, True))
        else:
            raise ValueError(f"unknown agent {name!r}; choose from {', '.join(STANDARD)} or openai:URL / hf:PATH")
    return out, skipped


def static_plan(expected: list[dict], question: str) -> list[dict]:
    """The family's fixed chain; each call's arguments from the same keyword rules the scripted policy uses."""
    return [{"name": step["name"], "args": keyword_args(step["name"], question.lower())} for step in expected]


_CHATS: dict = {}


def _chat(spec: AgentSpec):
    """One loaded LLM per backend (and adapter) per process, shared by every agent that uses it; model files come
    from the user's home (converted once), not the benchmark's."""
    key = (spec.llm, spec.adapter, _version(spec.adapter))
    if key not in _CHATS:
        if spec.adapter:
            from macro.agent.local_llm import LocalChatModel, embedded_base

            policy_id = f"embedded+grpo:{spec.adapter}"
            _CHATS[key] = (
                LocalChatModel(model_path=str(embedded_base()), adapter=spec.adapter, policy_id=policy_id),
                policy_id,
            )
        else:
            from macro.agent.policy import make_policy

            # Every agent but `macro` runs the SFT adapter, so `macro` is compared with it in the same run.
            _CHATS[key] = make_policy("embedded:sft" if spec.llm == "embedded" else spec.llm)
    return _CHATS[key]


def _version(adapter: str | None) -> str | None:
    """The adapter's model id, so an adapter retrained in place (``macro evolve``) is loaded again."""
    if adapter is None:
        return None
    from pathlib import Path

    from macro import weights

    return weights.read_manifest(Path(adapter), "macro train grpo").get("sha256")


def build_agent(spec: AgentSpec, home, plan: list[dict] | None = None):
    """A fresh :class:`~macro.agent.graph.Agent` for one spec (static agents get their task's plan)."""
    from macro.agent.graph import Agent
    from macro.skills.library import load_composites
    from macro.tools.registry import Registry

    registry = load_composites(Registry.default(), home) if spec.composites else Registry.default()
    if spec.static:
        return Agent(ScriptedPolicy(plan=plan), "static", registry=registry, home=home, memory=False)
    chat, policy_id = _chat(spec)
    return Agent(chat, policy_id, registry=registry, home=home, memory=spec.memory)
