"""A deterministic policy for tests and as the fixed-pipeline baseline: keyword rules or an explicit plan.

It speaks the same protocol as an LLM (``bind_tools`` then ``AIMessage`` with ``tool_calls``), so everything
downstream of the policy is exercised exactly as in a real run.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool

AXIS_WORDS = {"coronal": "coronal", "sagittal": "sagittal", "axial": "axial", "transverse": "axial"}
SEQUENCE_WORDS = [("t1ce", "t1ce"), ("post-contrast", "t1ce"), ("contrast", "t1ce"), ("flair", "flair"), ("t2", "t2"), ("t1", "t1")]
RULES: list[tuple[str, str]] = [
    ("segment_brain_tumor", r"segment|delineat|outline|\bmasks?\b|boundar"),
    ("classify_lesion", r"lesion|mole|melanoma|nev|carcinoma|diagnos|classif|what kind of|benign|malignan"),
    ("classify_findings", r"finding|effusion|cardiomegal|pneumothorax|nodule|\bmass\b|consolidat|atelecta|infiltrat|x-?ray|radiograph|abnormal"),
    ("measure_volume", r"volume|how (big|large)|size of the (tumou?r|lesion|mass|core)|burden|\bml\b|millilit|measure"),
    ("render_slice", r"\bshow|render|display|\bview|picture|visuali[sz]e|\bplot|\bdraw|screenshot|\bsee\b"),
    ("crop_resample", r"resampl|\bcrop|isotropic|regrid|downsampl|interpolat"),
    ("describe_scan", r"describ|what (kind|type) of|modality|dimension|spacing|resolution|sequences|metadata|overview|what is this"),
]


def plan_for(question: str, available: set[str], has_reference_mask: bool = True) -> list[dict]:
    """Keyword rules → ordered tool calls (by where each intent appears in the question).

    A volume question on a case without a reference mask is answered from a fresh segmentation first.
    """
    q = question.lower()
    hits = []
    for tool, pattern in RULES:
        match = re.search(pattern, q)
        if match and tool in available:
            hits.append((match.start(), tool))
    tools = [tool for _, tool in sorted(hits)]
    if "measure_volume" in tools and "segment_brain_tumor" in available and not has_reference_mask and "segment_brain_tumor" not in tools:
        tools.insert(tools.index("measure_volume"), "segment_brain_tumor")
    if not tools and "describe_scan" in available:
        tools = ["describe_scan"]
    return [{"name": tool, "args": _args(tool, q)} for tool in tools]


def _args(tool: str, q: str) -> dict:
    if tool == "measure_volume":
        if re.search(r"enhanc|active|\bet\b|gadolinium", q):
            return {"region": "ET"}
        if re.search(r"core|necro|\btc\b", q):
            return {"region": "TC"}
        return {"region": "WT"}
    if tool == "render_slice":
        args: dict[str, Any] = {}
        axis = next((a for w, a in AXIS_WORDS.items() if w in q), None)
        if axis:
            args["axis"] = axis
        seq = next((s for w, s in SEQUENCE_WORDS if w in q), None)
        if seq:
            args["sequence"] = seq
        index = re.search(r"slice (\d+)|index (\d+)", q)
        if index:
            args["index"] = int(index.group(1) or index.group(2))
        return args
    if tool == "segment_brain_tumor":
        if re.search(r"without (any )?(test-time )?adaptation|no adaptation|source model|as is|quick", q):
            return {"adapt": "none"}
        return {"adapt": "tent"} if "tent" in q else {}
    if tool == "crop_resample":
        mm = re.search(r"(\d+(?:\.\d+)?)\s*mm", q)
        return {"spacing_mm": float(mm.group(1))} if mm else {"crop": True}
    return {}


class ScriptedPolicy(BaseChatModel):
    plan: list[dict] | None = None

    @property
    def _llm_type(self) -> str:
        return "macro-scripted"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any):
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  tools: list[dict] | None = None, **kwargs: Any) -> ChatResult:
        last_user = max(i for i, m in enumerate(messages) if isinstance(m, HumanMessage))
        done = [m for m in messages[last_user:] if isinstance(m, ToolMessage)]
        available = {t["function"]["name"] for t in tools or []}
        reference = any(isinstance(m, SystemMessage) and "reference tumour mask available" in m.text for m in messages)
        plan = self.plan if self.plan is not None else plan_for(messages[last_user].text, available, reference)
        if len(done) < len(plan):
            call = plan[len(done)]
            msg = AIMessage("", tool_calls=[{"name": call["name"], "args": call.get("args", {}), "id": f"call_{len(done)}", "type": "tool_call"}])
        else:
            msg = AIMessage(" ".join(m.text for m in done if m.status != "error") or "I could not get a result from the tools.")
        return ChatResult(generations=[ChatGeneration(message=msg)])
