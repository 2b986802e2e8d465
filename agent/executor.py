"""The tool executor: validate a proposed call, inject the case and input artifacts, run it, record the step.

It knows nothing about LangGraph, so the chat graph, the benchmark runner and GRPO rollouts all execute tools
through this one function and get identical behaviour. A failing tool never raises out of here: the error comes
back as a ``ToolMessage`` with ``status="error"`` for the policy, and as a failed step for the trajectory.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from langchain_core.messages import ToolMessage
from pydantic import ValidationError

from macro.artifacts import ArtifactStore
from macro.case import Case
from macro.errors import CaseError
from macro.skills.composite import bound_history, resolve_args
from macro.tools.base import ToolContext
from macro.tools.registry import Registry

# Arguments a model may add out of habit; the executor supplies these itself.
INJECTED_NAMES = frozenset({"case", "case_id", "case_path", "image", "image_id", "scan", "mask", "mask_id", "path"})


@dataclass
class Step:
    tool: str
    args: dict
    ok: bool
    ms: float
    error: str | None = None
    summary: str = ""
    data: dict = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    version: str | None = None
    children: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class ToolExecutor:
    def __init__(self, registry: Registry, store: ArtifactStore):
        self.registry = registry
        self.store = store

    def run(
        self, call: dict, case: Case, history: list[dict], session: dict | None = None
    ) -> tuple[ToolMessage, Step, list[dict]]:
        """Execute one ``{"name", "args", "id"}`` call. Returns the message, the step and new artifact refs.

        ``session`` is the thread's in-memory tool state; pass the same dict for every call of a thread.
        """
        name, raw_args, call_id = call.get("name") or "", dict(call.get("args") or {}), call.get("id") or "call"
        start = time.perf_counter()
        offered = self.registry.for_case(case)
        tool = next((t for t in offered if t.name == name), None)
        if tool is None:
            known = ", ".join(t.name for t in offered)
            problem = (
                f"tool {name!r} does not accept this {case.modality} case"
                if name in self.registry
                else f"unknown tool {name!r}"
            )
            return self._fail(name, raw_args, call_id, start, f"{problem}; available: {known}")
        ignored = sorted(k for k in raw_args if k not in tool.args_schema.model_fields)
        args = {k: v for k, v in raw_args.items() if k not in ignored}
        try:
            parsed = tool.args_schema(**args)
        except ValidationError as exc:
            return self._fail(name, raw_args, call_id, start, _explain(name, exc), tool.spec.version)
        if getattr(type(tool), "definition", None) is not None:
            return self._run_composite(tool, parsed, call_id, case, history, session, start)
        ctx = ToolContext(case=case, store=self.store, history=history, session={} if session is None else session)
        try:
            result = tool.execute(ctx, parsed)
        except CaseError as exc:  # the policy needs the problem, not the full path
            where = f"{Path(exc.path).name}: " if exc.path else ""
            return self._fail(name, parsed.model_dump(), call_id, start, where + exc.problem, tool.spec.version)
        except Exception as exc:  # the agent survives any tool bug; the policy sees what happened
            return self._fail(
                name,
                parsed.model_dump(),
                call_id,
                start,
                f"{name} failed: {type(exc).__name__}: {exc}",
                tool.spec.version,
            )
        ms = (time.perf_counter() - start) * 1000
        text = result.text
        if ignored and not set(ignored) <= INJECTED_NAMES:
            text += f" (ignored unknown argument(s): {', '.join(ignored)})"
        step = Step(
            tool=name,
            args=parsed.model_dump(),
            ok=True,
            ms=ms,
            summary=text,
            data=result.data,
            inputs={"case": case.id, **ctx.used},
            outputs=[a["id"] for a in result.artifacts],
            version=tool.spec.version,
        )
        msg = ToolMessage(text, name=name, tool_call_id=call_id, artifact=result.model_dump())
        return msg, step, result.artifacts

    def _run_composite(self, tool, parsed, call_id, case, history, session, start):
        """Run a composite's steps through :meth:`run`: each is validated and recorded as a child step; the first
        failure stops the composite and is reported with the step it happened in."""
        comp = type(tool).definition
        params = parsed.model_dump()
        children, produced, results = [], [], []
        for j, spec in enumerate(comp.steps):
            call = {"name": spec["tool"], "args": resolve_args(spec, params, results), "id": f"{call_id}.{j}"}
            msg, child, refs = self.run(call, case, bound_history(spec, history, produced), session)
            children.append(child.to_dict())
            if not child.ok:
                error = f"{tool.name} stopped at step {j + 1}/{len(comp.steps)} ({spec['tool']}): {child.error}"
                step = Step(
                    tool=tool.name,
                    args=params,
                    ok=False,
                    ms=(time.perf_counter() - start) * 1000,
                    error=error,
                    version=tool.spec.version,
                    children=children,
                )
                return (
                    ToolMessage(f"error: {error}", name=tool.name, tool_call_id=call_id, status="error"),
                    step,
                    [r for p in produced for r in p],
                )
            produced.append(refs)
            results.append(child.data)
        refs = [r for p in produced for r in p]
        text = " ".join(c["summary"] for c in children)
        step = Step(
            tool=tool.name,
            args=params,
            ok=True,
            ms=(time.perf_counter() - start) * 1000,
            summary=text,
            data=results[-1],
            inputs={"case": case.id},
            outputs=[r["id"] for r in refs],
            version=tool.spec.version,
            children=children,
        )
        msg = ToolMessage(
            text, name=tool.name, tool_call_id=call_id, artifact={"text": text, "data": results[-1], "artifacts": refs}
        )
        return msg, step, refs

    def _fail(self, name, args, call_id, start, error, version=None):
        step = Step(
            tool=name, args=args, ok=False, ms=(time.perf_counter() - start) * 1000, error=error, version=version
        )
        return ToolMessage(f"error: {error}", name=name or "unknown", tool_call_id=call_id, status="error"), step, []


def _explain(name: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "arguments"
        allowed = err.get("ctx", {}).get("expected")
        parts.append(f"{loc}: {err['msg']}" + (f" (allowed: {allowed})" if allowed else ""))
    return f"invalid arguments for {name}: " + "; ".join(parts)
