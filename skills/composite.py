"""Composite tools (skills) as data: a JSON definition run by one generic interpreter, never generated code.

A definition lists atomic steps. Each step argument is either a parameter of the composite (``{"param": name}``;
a constant seen in the mined chains becomes the parameter's overridable default) or a value read from an earlier
step's result (``{"from": {"step": i, "field": key}}``). ``inputs`` binds an input artifact slot of a step to the
artifact an earlier step produced (``{"mask": 0}``), the data flow recorded in the trajectories.

:func:`make_tool` turns a definition into a registered :class:`~macro.tools.base.MacroTool` whose arguments schema
is derived from the atomic tools' own fields, so a composite is validated like any tool when it is defined.
:meth:`CompositeBase.execute` is the one interpreter: it runs each step through :meth:`ToolContext.call`, i.e.
through the executor that runs the composite, so every intermediate call is validated, recorded as a child step and
visible in the trajectory.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import ClassVar

from pydantic import BaseModel, create_model
from pydantic.fields import FieldInfo

from macro.case import modalities
from macro.tools.base import ANY_MODALITY, MacroTool, ToolContext, ToolFailure, ToolResult, ToolSpec

KIND = "composite"
MAX_COMPOSITE_STEPS = 6  # the agent's whole turn allows 6 calls (agent.loop.MAX_STEPS), composite steps included
_NAME = re.compile(r"^[a-z][a-z0-9_]{2,47}$")


class DefinitionError(ValueError):
    """A composite definition that cannot run against the registered tools."""


@dataclass
class Composite:
    name: str
    steps: list[dict]
    params: dict[str, dict] = field(default_factory=dict)
    description: str = ""
    version: int = 1
    provenance: dict = field(default_factory=dict)
    verification: dict = field(default_factory=dict)

    @property
    def tools(self) -> tuple[str, ...]:
        return tuple(s["tool"] for s in self.steps)

    def to_dict(self) -> dict:
        return {"kind": KIND, **asdict(self)}

    @classmethod
    def from_dict(cls, raw: dict) -> "Composite":
        body = {k: v for k, v in raw.items() if k != "kind"}
        try:
            comp = cls(**body)
        except TypeError as exc:
            raise DefinitionError(f"composite {raw.get('name')!r}: {exc}") from None
        comp.check()
        return comp

    def digest(self) -> str:
        """Checksum of what the composite does (steps and parameters), not of its bookkeeping."""
        return hashlib.sha256(json.dumps([self.steps, self.params], sort_keys=True).encode()).hexdigest()

    def check(self) -> None:
        """Structural checks that need no registry: names, step references only point backwards, params exist."""
        if not _NAME.match(self.name):
            raise DefinitionError(f"composite name {self.name!r} must be snake_case, 3-48 characters")
        if not 2 <= len(self.steps) <= MAX_COMPOSITE_STEPS:
            raise DefinitionError(
                f"composite {self.name}: needs 2 to {MAX_COMPOSITE_STEPS} steps, has {len(self.steps)}"
            )
        used = set()
        for j, step in enumerate(self.steps):
            if not isinstance(step.get("tool"), str):
                raise DefinitionError(f"composite {self.name}: step {j} has no tool name")
            for slot, source in step.get("inputs", {}).items():
                if not isinstance(source, int) or not 0 <= source < j:
                    raise DefinitionError(
                        f"composite {self.name}: step {j} input {slot!r} must come from an earlier step, got {source!r}"
                    )
            for arg, spec in step.get("args", {}).items():
                if "param" in spec:
                    if spec["param"] not in self.params:
                        raise DefinitionError(
                            f"composite {self.name}: step {j} argument {arg!r} uses unknown parameter {spec['param']!r}"
                        )
                    used.add(spec["param"])
                elif "from" in spec:
                    if not 0 <= spec["from"].get("step", -1) < j or not isinstance(spec["from"].get("field"), str):
                        raise DefinitionError(
                            f"composite {self.name}: step {j} argument {arg!r} must read a field of an earlier step"
                        )
                else:
                    raise DefinitionError(f"composite {self.name}: step {j} argument {arg!r} needs 'param' or 'from'")
        if unused := set(self.params) - used:
            raise DefinitionError(f"composite {self.name}: parameters {sorted(unused)} are used by no step")


def resolve_args(step: dict, params: dict, results: list[dict]) -> dict:
    """A step's arguments from the composite's parameters and earlier steps' result data."""
    args = {}
    for arg, spec in step.get("args", {}).items():
        if "param" in spec:
            value = params.get(spec["param"])
        else:
            source = spec["from"]
            value = results[source["step"]].get(source["field"])
        if value is not None:
            args[arg] = value
    return args


def bound_history(step: dict, outer: list[dict], produced: list[list[dict]]) -> list[dict]:
    """The artifact history a step sees: everything so far, then its bound inputs last, so a tool that takes the
    newest artifact of a kind gets exactly the artifact the definition binds."""
    history = outer + [ref for refs in produced for ref in refs]
    for source in step.get("inputs", {}).values():
        history += produced[source]
    return history


def make_tool(comp: Composite, tools: dict[str, MacroTool]) -> MacroTool:
    """A MacroTool for ``comp``; ``tools`` maps names to the registered atomic tools it calls."""
    missing = [t for t in comp.tools if t not in tools]
    if missing:
        raise DefinitionError(f"composite {comp.name}: unknown tool(s) {', '.join(missing)}")
    nested = [t for t in comp.tools if getattr(type(tools[t]), "definition", None) is not None]
    if nested:
        raise DefinitionError(
            f"composite {comp.name}: steps must be atomic tools, not composites ({', '.join(nested)})"
        )
    fields = {}
    for name, p in comp.params.items():
        atomic = tools[p["tool"]].args_schema.model_fields.get(p["arg"])
        if atomic is None:
            raise DefinitionError(f"composite {comp.name}: tool {p['tool']} has no argument {p['arg']!r}")
        info = FieldInfo.merge_field_infos(atomic, default=p["default"]) if "default" in p else atomic
        fields[name] = (atomic.annotation, info)
    schema = create_model(f"{_camel(comp.name)}Args", __base__=BaseModel, **fields)
    specs = [tools[t].spec for t in comp.tools]
    modalities = _intersect([s.modalities for s in specs])
    dims = tuple(sorted(set.intersection(*(set(s.dims) for s in specs))))
    if not modalities or not dims:
        raise DefinitionError(f"composite {comp.name}: its tools accept no common modality and dimensionality")
    spec = ToolSpec(modalities=modalities, dims=dims, version=f"{KIND}-{comp.version}-{comp.digest()[:8]}")
    description = (comp.description or f"Runs {' -> '.join(comp.tools)} in one call.")[:200]
    namespace = {
        "__annotations__": {"name": str, "description": str, "args_schema": type[BaseModel]},
        "name": comp.name,
        "description": description,
        "args_schema": schema,
        "spec": spec,
        "definition": comp,
        "__module__": __name__,
    }
    cls = type(_camel(comp.name), (CompositeBase,), namespace)
    return cls()


class CompositeBase(MacroTool):
    """Shared behaviour of generated composite tools; validated only through its generated subclasses."""

    name: str = "composite_base"
    description: str = "Base class of mined composite tools."
    args_schema: type[BaseModel] = BaseModel
    spec: ClassVar[ToolSpec] = ToolSpec(modalities=(ANY_MODALITY,))
    definition: ClassVar[Composite | None] = None

    def execute(self, ctx: ToolContext, args: BaseModel) -> ToolResult:
        """Run the steps in order; the first failure stops the composite and names the step it happened in."""
        if ctx.call is None:
            raise ToolFailure(f"{self.name} is a composite tool: run it through a ToolExecutor, which runs its steps")
        comp = type(self).definition
        params = args.model_dump()
        children, produced, results = [], [], []
        for j, spec in enumerate(comp.steps):
            call = {"name": spec["tool"], "args": resolve_args(spec, params, results), "id": f"{self.name}.{j}"}
            child, refs = ctx.call(call, bound_history(spec, ctx.history, produced))
            children.append(child.to_dict())
            if not child.ok:
                error = f"{self.name} stopped at step {j + 1}/{len(comp.steps)} ({spec['tool']}): {child.error}"
                raise ToolFailure(error, children, [r for p in produced for r in p])
            produced.append(refs)
            results.append(child.data)
        refs = [r for p in produced for r in p]
        text = " ".join(c["summary"] for c in children)
        caveats = [c for child in children for c in child["caveats"]]
        headline = children[-1]["headline"]
        return ToolResult(
            text=text, headline=headline, caveats=caveats, data=results[-1], artifacts=refs, children=children
        )


def _intersect(groups: list[tuple[str, ...]]) -> tuple[str, ...]:
    concrete = [set(g) for g in groups if ANY_MODALITY not in g]
    if not concrete:
        return (ANY_MODALITY,)
    common = set.intersection(*concrete)
    return tuple(m for m in modalities() if m in common)


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))
