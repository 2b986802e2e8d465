"""The tool contract: a langchain-core ``BaseTool`` with a policy-facing pydantic schema plus a ``ToolSpec``.

The policy only chooses a tool and the few arguments that carry meaning; the case and input artifacts reach the
tool through a :class:`ToolContext` passed in the runnable config (``config["configurable"]["macro"]``), so a small
model never has to copy paths or ids into JSON. Subclasses are validated when they are defined, so a malformed
tool fails at import, not in the middle of a conversation.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from macro.artifacts import Artifact, ArtifactStore, kinds
from macro.case import Case, load_case, modalities, unknown_modality
from macro.config import Home
from macro.errors import CaseError
from macro.plugins import KIND_GROUP
from macro.weights import SLOTS

ANY_MODALITY = "*"


class ToolExample(BaseModel):
    """A request a user might make and the arguments it maps to; used to cold-start the local policy."""

    request: str
    args: dict[str, Any] = Field(default_factory=dict)


class ToolSpec(BaseModel):
    """What the agent, the policy's training data and the evaluations know about a tool, from the tool itself.

    ``inputs`` are the artifact kinds a call reads. One the case does not supply (a mask, unless the case ships a
    reference one) must come from an earlier call of a tool whose ``outputs`` include it, so that call comes first
    (:meth:`~macro.tools.registry.Registry.prerequisites`); a tool whose inputs nothing can supply is not offered.
    ``examples`` are requests a user might make, with the arguments they map to; ``follow_ups`` are requests that
    only make sense after an earlier call of this tool in the thread ("And the core?"). ``cases`` name the example cases
    that exercise the tool (:data:`macro.data.EXAMPLES`, ``builder`` names of :mod:`macro.data`, or
    ``wheel:package/path`` for a real scan shipped in an installed wheel): the SFT dialogues are built on them. How
    a result answers a question is the tool's :attr:`ToolResult.headline`, which trained answers quote.
    ``timeout_s`` and ``memory_mb`` bound one call (:mod:`macro.tools.worker`).
    """

    model_config = ConfigDict(frozen=True)

    modalities: tuple[str, ...]
    dims: tuple[int, ...] = (2, 3)
    inputs: dict[str, str] = Field(default_factory=lambda: {"case": "image"})
    outputs: dict[str, str] = Field(default_factory=dict)
    version: str = "0.1.0"
    weights: str | None = None  # the name of the model's slot in macro.weights (which copy is in use, how to remake it)
    deterministic: bool = False  # same inputs, same result: the executor may reuse a cached one (macro.tools.cache)
    examples: tuple[ToolExample, ...] = ()
    follow_ups: tuple[ToolExample, ...] = ()
    cases: tuple[str, ...] = ()
    timeout_s: float = Field(default=120.0, gt=0)  # wall clock per call, enforced by the executor's worker process
    memory_mb: int = Field(default=4096, gt=0)  # what one call may add to its worker's resident memory

    @property
    def needs(self) -> frozenset[str]:
        """Input kinds besides the case image."""
        return frozenset(self.inputs.values()) - {"image"}

    def accepts(self, case: Case) -> bool:
        return (ANY_MODALITY in self.modalities or case.modality in self.modalities) and case.dims in self.dims


class ToolResult(BaseModel):
    """What a tool returns: a short text for the policy, structured data, the artifacts it wrote and, for a tool made
    of other calls, the steps of those calls. ``headline`` states the result in one sentence a clinician can read
    (value and unit, label and probability, decision and threshold); an answer starts with it. ``caveats`` are what
    the reader must know to trust it (adaptation used, a partial result). A tool that gives no headline gets the
    first sentence of its text."""

    text: str
    headline: str = ""
    caveats: list[str] = Field(default_factory=list)
    data: dict[str, Any] = Field(default_factory=dict)
    artifacts: list[dict] = Field(default_factory=list)
    children: list[dict] = Field(default_factory=list)


def admits(parameters: dict, args: dict) -> bool:
    """Whether ``args`` fit a (narrowed) JSON schema's names, enums and bounds: what a constrained policy can write.
    Used to keep training examples that a case's schema rules out (a sequence on a one-channel scan) out of its
    dialogues."""
    properties = parameters.get("properties", {})
    return all(name in properties and _fits(properties[name], value) for name, value in args.items())


def _fits(prop: dict, value: Any) -> bool:
    if "anyOf" in prop:
        return any(_fits(branch, value) for branch in prop["anyOf"])
    if value is None:
        return prop.get("type") == "null"
    if "enum" in prop and value not in prop["enum"]:
        return False
    return (
        prop.get("minimum", value) <= value <= prop.get("maximum", value) if isinstance(value, (int, float)) else True
    )


def case_artifacts(history: list[dict], case_id: str) -> list[dict]:
    """The thread's artifacts made from this case. A thread may hold several cases, and a mask of one patient must
    never be measured or overlaid on another, even when their shapes agree; a ref without a case (written before
    refs carried one) has unknown provenance and is left out too."""
    return [ref for ref in history if ref.get("case") == case_id]


def first_sentence(text: str) -> str:
    """Up to the first full stop that ends a sentence (not a decimal point)."""
    match = re.search(r"[.!?](\s|$)", text)
    return text[: match.end()].strip() if match else text.strip()


class ToolFailure(RuntimeError):
    """A tool made of other calls stopped part-way: the message says where, ``children`` holds the steps that ran and
    ``artifacts`` what they wrote, so the trajectory keeps them."""

    def __init__(self, message: str, children: list[dict] = (), artifacts: list[dict] = ()):
        super().__init__(message)
        self.children = list(children)
        self.artifacts = list(artifacts)


@dataclass
class ToolContext:
    """Everything a tool may use besides its arguments: the case, the run's artifact store, earlier artifacts,
    ``session``, in-memory state that lives as long as the agent thread (e.g. a test-time-adapted model), and
    ``call``, set by the executor running the tool, which runs a nested ``{"name", "args", "id"}`` call with a given
    artifact history through that same executor and returns its step and the artifacts it wrote."""

    case: Case
    store: ArtifactStore
    history: list[dict] = field(default_factory=list)
    used: dict[str, str] = field(default_factory=dict)
    session: dict = field(default_factory=dict)
    call: Callable[[dict, list[dict]], tuple[Any, list[dict]]] | None = None

    def latest(self, kind: str) -> Artifact | None:
        """Newest artifact of a kind produced earlier in the thread, recorded as this step's input."""
        for ref in reversed(self.history):
            if ref.get("kind") == kind:
                art = self.store.get(ref["id"])
                self.used[kind] = art.id
                return art
        return None

    @classmethod
    def for_case(cls, case: Case | str | Path, home_artifacts: Path | None = None) -> "ToolContext":
        case = case if isinstance(case, Case) else load_case(case)
        return cls(case=case, store=ArtifactStore(home_artifacts or Home.current().artifacts))


class MacroTool(BaseTool):
    """Base class of every MACRO tool. Implement :meth:`execute`; never override ``_run``."""

    spec: ClassVar[ToolSpec]
    response_format: str = "content_and_artifact"
    _narrowed: dict | None = PrivateAttr(default=None)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        validate_definition(cls)

    def offered(self, case: Case) -> bool:
        """Whether the tool is offered for ``case`` (the registry and the executor ask); by default its spec decides,
        a tool whose competence is learnt at run time (the anomaly bank) narrows it."""
        return self.spec.accepts(case)

    def narrow(self, case: Case, parameters: dict) -> dict:
        """The arguments' JSON schema as it applies to ``case`` (a copy the tool may edit): a tool whose valid values
        depend on the scan (its channels, its slice count) narrows them here, so a policy is shown only what this
        case admits and a constrained one cannot write anything else. By default nothing changes."""
        return parameters

    def for_case(self, case: Case) -> "MacroTool":
        """This tool as offered on ``case``: the same tool, showing the policy the schema :meth:`narrow` gives (its
        execution and validation are unchanged)."""
        base = super().tool_call_schema
        parameters = base if isinstance(base, dict) else base.model_json_schema()
        narrowed = self.narrow(case, copy.deepcopy(parameters))
        if narrowed == parameters:
            return self
        offered = self.model_copy()
        offered._narrowed = narrowed
        return offered

    @property
    def tool_call_schema(self):
        return self._narrowed if self._narrowed is not None else super().tool_call_schema

    def cache_state(self, ctx: ToolContext, args: BaseModel) -> str | None:
        """The thread state (``ctx.session``) this call's result depends on, as a string for the result cache, or
        None to never cache this call. A stateless tool returns ""."""
        return ""

    def on_cache_hit(self, ctx: ToolContext, args: BaseModel) -> None:
        """A cached result stood in for this call: update the thread state as running it would have."""

    def execute(self, ctx: ToolContext, args: BaseModel) -> ToolResult:
        raise NotImplementedError

    def _run(self, config: RunnableConfig, run_manager: Any = None, **kwargs: Any) -> tuple[str, ToolResult]:
        ctx = (config.get("configurable") or {}).get("macro")
        if not isinstance(ctx, ToolContext):
            raise CaseError(
                None,
                f"tool {self.name} needs a case: pass "
                f"config={{'configurable': {{'macro': ToolContext.for_case(path)}}}}",
            )
        if not self.offered(ctx.case):
            raise CaseError(
                ctx.case.paths[0],
                f"tool {self.name} does not accept a {ctx.case.dims}D {ctx.case.modality} case",
                accepted=f"modalities {', '.join(self.spec.modalities)}; {'/'.join(map(str, self.spec.dims))}D",
            )
        result = self.execute(ctx, self.args_schema(**kwargs))
        return result.text, result


TOOL_NAME = re.compile(r"^[a-z][a-z0-9_]{2,47}$")  # snake_case, 3-48 characters: what a small model can copy


def validate_definition(cls: type[MacroTool]) -> None:
    """Raise a TypeError naming the tool and what is wrong with its definition (name, description, schema, spec,
    examples): run when a tool class is made, so a malformed tool fails at import, not in a conversation."""
    fields = cls.model_fields
    name = fields["name"].default if "name" in fields else None
    where = f"tool {cls.__qualname__} ({cls.__module__})"
    if not isinstance(name, str) or not TOOL_NAME.match(name):
        raise TypeError(f"{where}: name must be snake_case, 3-48 chars, got {name!r}")
    description = fields["description"].default if "description" in fields else ""
    if not description or len(description) > 200:
        raise TypeError(f"{where}: description must be 1-200 characters (it goes into a small model's prompt)")
    schema = fields["args_schema"].default if "args_schema" in fields else None
    if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
        raise TypeError(f"{where}: args_schema must be a pydantic model class")
    spec = getattr(cls, "spec", None)
    if not isinstance(spec, ToolSpec):
        raise TypeError(f"{where}: spec must be a ToolSpec")
    for modality in spec.modalities:
        if modality != ANY_MODALITY and modality not in modalities():
            raise TypeError(f"{where}: {unknown_modality(modality)}; known: {', '.join(modalities())}")
    for kind in (*spec.inputs.values(), *spec.outputs.values()):
        if kind not in kinds():
            raise TypeError(
                f"{where}: unknown input/output kind {kind!r}; expected one of {kinds()} (a plug-in adds one as an "
                f"entry point in the group {KIND_GROUP})"
            )
    if spec.weights is not None and spec.weights not in SLOTS:
        raise TypeError(
            f"{where}: weights {spec.weights!r} is not a declared slot (macro.weights.slot): {sorted(SLOTS)}"
        )
    requests = [example.request for example in (*spec.examples, *spec.follow_ups)]
    if repeated := sorted({r for r in requests if requests.count(r) > 1}):
        raise TypeError(f"{where}: example requests repeat {repeated} (one could land in training, one held out)")
    for example in (*spec.examples, *spec.follow_ups):
        try:
            schema(**example.args)
        except ValidationError as exc:
            raise TypeError(f"{where}: example {example.request!r} has arguments its schema refuses: {exc}") from None
