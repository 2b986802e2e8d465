"""A deterministic policy for tests and as the fixed-pipeline baseline: keyword rules or an explicit plan.

Experience reaches it as it reaches an LLM, through the prompt: it calls an offered composite in place of the
atomic chain it would have planned, and with no rule matching it follows the chain of the most similar verified
case named in a memory hint.

It speaks the same protocol as an LLM (``bind_tools`` then ``AIMessage`` with ``tool_calls``), so everything
downstream of the policy is exercised exactly as in a real run.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool

from macro.tools.registry import plan_inputs

AXIS_WORDS = {"coronal": "coronal", "sagittal": "sagittal", "axial": "axial", "transverse": "axial"}
SEQUENCE_WORDS = [
    ("t1ce", "t1ce"),
    ("post-contrast", "t1ce"),
    ("contrast", "t1ce"),
    ("flair", "flair"),
    ("t2", "t2"),
    ("t1", "t1"),
]
RULES: list[tuple[str, str]] = [
    ("segment_brain_tumor", r"segment|delineat|outline|\bmasks?\b|boundar"),
    ("classify_lesion", r"lesion|mole|melanoma|nev|carcinoma|diagnos|classif|what kind of|benign|malignan"),
    (
        "classify_findings",
        r"finding|effusion|cardiomegal|pneumothorax|nodule|\bmass\b|consolidat|atelecta|infiltrat|x-?ray|radiograph|abnormal",
    ),
    ("answer_stepwise", r"step[- ]by[- ]step|stepwise|chain of thought|\breason|diagnos"),
    ("score_anomaly", r"anomal|\bscreen|unusual|abnormal"),
    ("measure_volume", r"volume|how (big|large)|size of the (tumou?r|lesion|mass|core)|burden|\bml\b|millilit|measure"),
    ("render_slice", r"\bshow|render|display|\bview|picture|visuali[sz]e|\bplot|\bdraw|screenshot|\bsee\b"),
    ("crop_resample", r"resampl|\bcrop|isotropic|regrid|downsampl|interpolat"),
    (
        "describe_scan",
        r"describ|what (kind|type) of|modality|dimension|spacing|resolution|sequences|metadata|overview|what is this",
    ),
]


def plan_for(question: str, available: set[str], fallback: bool = True) -> list[dict]:
    """Keyword rules → ordered tool calls (by where each intent appears in the question). With no rule matching,
    ``fallback`` describes the scan. What a call needs first is added by :func:`with_prerequisites`."""
    q = question.lower()
    hits = []
    for tool, pattern in RULES:
        match = re.search(pattern, q)
        if match and tool in available:
            hits.append((match.start(), tool))
    tools = [tool for _, tool in sorted(hits)]
    if {"classify_findings", "score_anomaly"} <= set(tools) and not re.search(r"anomal|\bscreen", q):
        tools.remove(
            "score_anomaly"
        )  # "abnormal" on an X-ray asks for findings; the anomaly screen needs its own words
    if not tools and fallback and "describe_scan" in available:
        tools = ["describe_scan"]
    return [{"name": tool, "args": keyword_args(tool, q)} for tool in tools]


def keyword_args(tool: str, q: str) -> dict:
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
    if tool == "answer_stepwise":
        return {"model": "teacher"} if re.search(r"teacher|graph", q) else {}
    if tool == "crop_resample":
        mm = re.search(r"(\d+(?:\.\d+)?)\s*mm", q)
        return {"spacing_mm": float(mm.group(1))} if mm else {"crop": True}
    return {}


def with_prerequisites(plan: list[dict], tools: list[dict], provided: set[str]) -> list[dict]:
    """Put before each call the calls its tool's spec says must come first (:func:`plan_inputs` over the offered
    tools' ``macro`` specs, given what the case provides and earlier calls output)."""
    specs = {
        t["function"]["name"]: (
            frozenset(t.get("macro", {}).get("needs", ())),
            frozenset(t.get("macro", {}).get("outputs", ())),
        )
        for t in tools
    }
    out, have = [], frozenset(provided)
    for call in plan:
        needs, outputs = specs.get(call["name"], (frozenset(), frozenset()))
        before = plan_inputs(needs, {n: s for n, s in specs.items() if n != call["name"]}, have) or []
        out += [{"name": n, "args": {}} for n in before] + [call]
        have = have.union(outputs, *(specs[n][1] for n in before))
    return out


COMPOSITE = re.compile(r"Runs (\S+(?: -> \S+)+) in one call")
MEMORY = re.compile(r"solved by: (\[.*\])")


def use_composites(plan: list[dict], tools: list[dict]) -> list[dict]:
    """Replace runs of planned atomic calls by an offered composite that chains the same tools (longest first).

    A step argument maps to the composite parameter of the same name, or ``<arg>_<step>`` where two steps share
    an argument name (the miner's naming)."""
    composites = []
    for t in tools:
        match = COMPOSITE.search(t["function"].get("description", ""))
        if match:
            composites.append(
                (
                    match.group(1).split(" -> "),
                    t["function"]["name"],
                    set(t["function"]["parameters"].get("properties", {})),
                )
            )
    composites.sort(key=lambda c: -len(c[0]))
    out, i = [], 0
    while i < len(plan):
        for chain, name, params in composites:
            if [c["name"] for c in plan[i : i + len(chain)]] == chain:
                args = {}
                for j, call in enumerate(plan[i : i + len(chain)]):
                    for arg, value in call.get("args", {}).items():
                        key = arg if arg in params else f"{arg}_{j + 1}"
                        if key in params:
                            args[key] = value
                out.append({"name": name, "args": args})
                i += len(chain)
                break
        else:
            out.append(plan[i])
            i += 1
    return out


def remembered_plan(messages: list[BaseMessage], available: set[str]) -> list[dict]:
    """The tool chain of the most similar verified case named in a memory hint (a first-action prior)."""
    for msg in messages:
        if isinstance(msg, SystemMessage):
            for line in msg.text.splitlines():
                match = MEMORY.search(line)
                if match:
                    try:
                        chain = json.loads(match.group(1))
                    except ValueError:
                        continue
                    if chain and all(c.get("name") in available for c in chain):
                        return chain
    return []


class ScriptedPolicy(BaseChatModel):
    plan: list[dict] | None = None

    @property
    def _llm_type(self) -> str:
        return "macro-scripted"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any):
        """Tools as OpenAI schemas plus, under ``macro``, what their specs say a call needs and makes."""
        schemas = []
        for t in tools:
            spec = getattr(t, "spec", None)
            extra = {} if spec is None else {"needs": sorted(spec.needs), "outputs": sorted(set(spec.outputs.values()))}
            schemas.append({**convert_to_openai_tool(t), "macro": extra})
        return self.bind(tools=schemas, **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        tools: list[dict] | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        last_user = max(i for i, m in enumerate(messages) if isinstance(m, HumanMessage))
        done = [m for m in messages[last_user:] if isinstance(m, ToolMessage)]
        available = {t["function"]["name"] for t in tools or []}
        reference = any(isinstance(m, SystemMessage) and "reference tumour mask available" in m.text for m in messages)
        if self.plan is not None:
            plan = self.plan
        else:
            provided = {"image", "mask"} if reference else {"image"}
            plan = plan_for(messages[last_user].text, available, fallback=False)
            plan = with_prerequisites(plan, tools or [], provided) or remembered_plan(messages, available)
            plan = use_composites(plan or plan_for("", available), tools or [])
        if len(done) < len(plan):
            call = plan[len(done)]
            msg = AIMessage(
                "",
                tool_calls=[
                    {"name": call["name"], "args": call.get("args", {}), "id": f"call_{len(done)}", "type": "tool_call"}
                ],
            )
        else:
            results = [m.artifact or {} for m in done if m.status != "error"]
            headlines = [r.get("headline") or r.get("text", "") for r in results]
            msg = AIMessage(headlines[-1] if headlines else "I could not get a result from the tools.")
        return ChatResult(generations=[ChatGeneration(message=msg)])
