"""The tool executor: validate a proposed call, inject the case and input artifacts, run it, record the step.

It knows nothing about LangGraph or the skill library, so the chat graph, replay verification, the benchmark runner
and GRPO rollouts all execute tools through this one class and get identical behaviour. A tool that is made of
other calls (a composite) runs them through :meth:`ToolContext.call`, which comes back here, so every intermediate
call is validated, timed and recorded as a child step. A failing tool never raises out of here: the error comes
back as a ``ToolMessage`` with ``status="error"`` for the policy, and as a failed step for the trajectory.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from langchain_core.messages import ToolMessage
from pydantic import ValidationError

from macro.artifacts import ArtifactStore
from macro.case import Case
from macro.tools.base import MacroTool, ToolContext, ToolResult, case_artifacts, first_sentence
from macro.tools.cache import ResultCache
from macro.tools.registry import Registry, kind
from macro.tools.worker import POOL, Limits, Outcome, execute, isolation_enabled

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
    headline: str = ""
    caveats: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    version: str | None = None
    children: list[dict] = field(default_factory=list)
    cached: bool = False  # the result came from the result cache, not a run

    @property
    def call(self) -> str:
        """The call as people read it: ``tool(name=value, ...)``, unset arguments left out."""
        args = ", ".join(f"{k}={v}" for k, v in self.args.items() if v is not None)
        return f"{self.tool}({args})"

    def to_dict(self) -> dict:
        return asdict(self)


class ToolExecutor:
    def __init__(self, registry: Registry, store: ArtifactStore, cache: bool = True, isolate: bool | None = None):
        """``cache``: reuse results of deterministic tools (:mod:`macro.tools.cache`, kept in the store's root).
        ``isolate``: run atomic tools in a killable worker process within their limits (:mod:`macro.tools.worker`);
        by default unless ``MACRO_TOOL_ISOLATION=0``. Composites run here; each of their steps is isolated."""
        self.registry = registry
        self.store = store
        self.cache = ResultCache(store.root) if cache else None
        self.isolate = isolation_enabled() if isolate is None else isolate

    def run(
        self, call: dict, case: Case, history: list[dict], session: dict | None = None
    ) -> tuple[ToolMessage, Step, list[dict]]:
        """Execute one ``{"name", "args", "id"}`` call. Returns the message, the step and new artifact refs.

        ``session`` is the thread's in-memory tool state; pass the same dict for every call of a thread.
        """
        name, raw_args, call_id = call.get("name") or "", dict(call.get("args") or {}), call.get("id") or "call"
        session = {} if session is None else session
        history = case_artifacts(history, case.id)
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

        def nested(sub: dict, sub_history: list[dict]) -> tuple[Step, list[dict]]:
            _, step, refs = self.run(sub, case, sub_history, session)
            return step, refs

        ctx = ToolContext(case=case, store=self.store, history=history, session=session, call=nested)
        version = tool.spec.version
        key = hit = None
        if self.cache is not None and tool.spec.deterministic:
            state = tool.cache_state(ctx, parsed)
            if state is not None:
                key = ResultCache.key(tool, case, parsed.model_dump(mode="json"), history, state)
                hit = self.cache.get(key)
        if hit is not None:
            result = ToolResult(**hit["result"])
            ctx.used.update(hit["used"])
            tool.on_cache_hit(ctx, parsed)
        else:
            outcome = self._execute(tool, ctx, parsed)
            if outcome.result is None:
                failure = (outcome.error, version, outcome.children, outcome.artifacts, case.id)
                return self._fail(name, parsed.model_dump(), call_id, start, *failure)
            result = outcome.result
        if key is not None and hit is None:
            self.cache.put(key, result.model_dump(mode="json"), ctx.used)
        ms = (time.perf_counter() - start) * 1000
        text = result.text  # the policy is told about arguments it invented; the person reading the answer is not
        if ignored and not set(ignored) <= INJECTED_NAMES:
            text += f" (ignored unknown argument(s): {', '.join(ignored)})"
        step = Step(
            tool=name,
            args=parsed.model_dump(),
            ok=True,
            ms=ms,
            summary=result.text,
            headline=result.headline or first_sentence(result.text),
            caveats=list(result.caveats),
            data=result.data,
            inputs={"case": case.id, **ctx.used},
            outputs=[a["id"] for a in result.artifacts],
            version=version,
            children=result.children,
            cached=hit is not None,
        )
        msg = ToolMessage(text, name=name, tool_call_id=call_id, artifact=result.model_dump())
        return msg, step, [{**ref, "case": case.id} for ref in result.artifacts]

    def _execute(self, tool: MacroTool, ctx: ToolContext, parsed) -> Outcome:
        if not self.isolate or kind(tool) == "composite":
            return execute(tool, ctx, parsed)
        outcome = POOL.run(tool, ctx, parsed, Limits.of(tool))
        if outcome.result is not None:  # the worker's view of the thread's state becomes the thread's
            ctx.used.update(outcome.used)
            ctx.session.clear()
            ctx.session.update(outcome.session)
        return outcome

    def _fail(self, name, args, call_id, start, error, version=None, children=(), artifacts=(), case_id=None):
        ms = (time.perf_counter() - start) * 1000
        step = Step(tool=name, args=args, ok=False, ms=ms, error=error, version=version, children=list(children))
        message = ToolMessage(f"error: {error}", name=name or "unknown", tool_call_id=call_id, status="error")
        return message, step, [{**ref, "case": case_id} for ref in artifacts]


def _explain(name: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "arguments"
        allowed = err.get("ctx", {}).get("expected")
        parts.append(f"{loc}: {err['msg']}" + (f" (allowed: {allowed})" if allowed else ""))
    return f"invalid arguments for {name}: " + "; ".join(parts)
