"""The tool contract as one check a plug-in author runs from pytest: ``check_tool(my_tool)``.

It checks what the agent relies on, the way the agent does it: the definition, the schema in the OpenAI tool format
the policy sees, the example requests the embedded policy learns from, pickling into a worker, and real calls
through :class:`~macro.tools.executor.ToolExecutor` (isolated in a spawned worker) on the example cases the spec
names, after the calls its inputs need. A passing tool is offered, trained on and run like a built-in.
"""

from __future__ import annotations

import json
import pickle
import tempfile
from pathlib import Path

from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ValidationError

from macro.artifacts import ArtifactStore
from macro.case import Case
from macro.data import example_case
from macro.tools.base import MacroTool, admits, validate_definition
from macro.tools.executor import ToolExecutor
from macro.tools.registry import Registry

# Every fifth example request is held out of the policy's training (macro.training.sft_data.split_examples), so
# fewer than this leave nothing to test it on.
MIN_EXAMPLES = 5
BAD_VALUE = {"not": "a valid value"}


class ContractError(AssertionError):
    """A tool that breaks the contract; the message lists every problem."""

    def __init__(self, name: str, problems: list[str]):
        super().__init__(f"tool {name} breaks the MACRO tool contract:\n" + "\n".join(f"  - {p}" for p in problems))
        self.problems = problems


def check_tool(tool: MacroTool | type[MacroTool]) -> None:
    """Raise :class:`ContractError` listing every problem of ``tool`` (a tool class or instance)."""
    tool = tool() if isinstance(tool, type) and issubclass(tool, MacroTool) else tool
    found = problems(tool)
    if found:
        raise ContractError(getattr(tool, "name", repr(tool)), found)


def problems(tool: MacroTool | type[MacroTool]) -> list[str]:
    """Every way ``tool`` breaks the contract, each a sentence naming what and where; empty when it meets it."""
    if isinstance(tool, type) and issubclass(tool, MacroTool):
        tool = tool()
    if not isinstance(tool, MacroTool):
        return [f"{tool!r} is not a MacroTool (a class made with @tool or a MacroTool subclass)"]
    try:
        validate_definition(type(tool))
    except TypeError as exc:
        return [str(exc)]
    unpicklable = _pickle_problems(tool)
    found = [*_schema_problems(tool), *unpicklable]
    if not tool.spec.cases:
        found.append("spec.cases names no example case, so it cannot be run here nor trained on")
    elif not unpicklable:
        found += _run_problems(tool)
    return found


def _schema_problems(tool: MacroTool) -> list[str]:
    try:
        parameters = json.loads(json.dumps(convert_to_openai_tool(tool)))["function"]["parameters"]
    except Exception as exc:
        return [f"its arguments do not convert to the OpenAI tool format the policy sees: {type(exc).__name__}: {exc}"]
    found = []
    examples = tool.spec.examples
    if len(examples) < MIN_EXAMPLES:
        found.append(
            f"spec.examples has {len(examples)} request(s); give at least {MIN_EXAMPLES} in different users' words "
            "(the embedded policy learns the tool from them, and every fifth is held out to test it)"
        )
    for example in (*examples, *tool.spec.follow_ups):
        if not admits(parameters, example.args):
            found.append(f"example {example.request!r}: arguments {example.args} are outside the policy's schema")
    return found


def _pickle_problems(tool: MacroTool) -> list[str]:
    try:
        copy = pickle.loads(pickle.dumps(tool))
    except Exception as exc:
        return [
            f"it does not pickle ({type(exc).__name__}: {exc}); a tool runs in a spawned worker, which imports it by "
            "module and name, so define it at the top level of an importable module"
        ]
    return [] if type(copy) is type(tool) else ["it does not unpickle as the same class"]


def _registry(tool: MacroTool) -> tuple[Registry, list[str]]:
    """The installed tools with ``tool`` in place of its installed copy, so its inputs' producers can run first."""
    installed = Registry.default()
    found = [
        f"its name is taken by {_where(t)}"
        for t in installed.all()
        if t.name == tool.name and _where(t) != _where(tool)
    ]
    return Registry([*(t for t in installed.all() if t.name != tool.name), tool]), found


def _where(tool: MacroTool) -> str:
    return f"{type(tool).__module__}.{type(tool).__qualname__}"


def _run_problems(tool: MacroTool) -> list[str]:
    registry, found = _registry(tool)
    with tempfile.TemporaryDirectory(prefix="macro-contract-") as tmp:
        executor = ToolExecutor(registry, ArtifactStore(Path(tmp) / "artifacts"), cache=False, isolate=True)
        loaded: list[tuple[str, Case]] = []
        for name in tool.spec.cases:
            try:
                case = example_case(name, Path(tmp) / "cases")
            except Exception as exc:
                found.append(f"example case {name!r} does not load: {exc}")
                continue
            loaded.append((name, case))
            found += [f"on {name}: {p}" for p in _case_problems(tool, registry, executor, case)]
        if loaded:
            name, case = loaded[0]
            found += [f"on {name}: {p}" for p in _bad_argument_problems(tool, executor, case)]
    return found


def _case_problems(tool: MacroTool, registry: Registry, executor: ToolExecutor, case: Case) -> list[str]:
    if not tool.offered(case):
        return [f"not offered for this {case.dims}D {case.modality} case (spec.modalities, spec.dims)"]
    plan = registry.prerequisites(tool, case)
    if plan is None:
        return [f"nothing installed makes its inputs {sorted(tool.spec.needs)} for this case"]
    history: list[dict] = []
    for name in plan:
        _, step, refs = executor.run({"name": name, "args": {}, "id": name}, case, history)
        if not step.ok:
            return [f"{name}, which makes its inputs, failed: {step.error}"]
        history += refs
    parameters = convert_to_openai_tool(tool.for_case(case))["function"]["parameters"]
    args = next((ex.args for ex in tool.spec.examples if admits(parameters, ex.args)), {})
    call = {"name": tool.name, "args": args, "id": "contract"}
    _, step, refs = executor.run(call, case, history)
    if not step.ok:
        return [f"the call {args} failed: {step.error}"]
    found = []
    if not step.headline.strip():
        found.append("its result has no headline nor text (the answer leads with its one-sentence headline)")
    declared = set(tool.spec.outputs.values())
    for ref in refs:
        if ref["kind"] not in declared:
            found.append(f"it wrote a {ref['kind']!r} artifact; spec.outputs declares {sorted(declared) or 'none'}")
        if not Path(ref["path"]).is_file():
            found.append(f"its artifact {ref['id']} has no file at {ref['path']}")
    if tool.spec.deterministic:
        _, again, _ = executor.run(call, case, history)
        if (again.summary, again.data) != (step.summary, step.data):
            found.append(
                "spec.deterministic is set but two calls gave different results, so cached ones would be wrong"
            )
    return found


def _bad_argument_problems(tool: MacroTool, executor: ToolExecutor, case: Case) -> list[str]:
    """A value its field rejects (an object where a number or a name goes) must come back as the executor's argument
    error, which the policy reads, not as a failure of the tool."""
    rejecting = [name for name in tool.args_schema.model_fields if _rejects(tool, name)]
    if not rejecting or not tool.offered(case):
        return []
    _, step, _ = executor.run({"name": tool.name, "args": {rejecting[0]: BAD_VALUE}, "id": "bad"}, case, [])
    if step.ok or not (step.error or "").startswith(f"invalid arguments for {tool.name}"):
        return [f"a bad value for {rejecting[0]!r} did not give the argument error (got {step.error or 'success'})"]
    return []


def _rejects(tool: MacroTool, name: str) -> bool:
    try:
        tool.args_schema.model_validate({name: BAD_VALUE})
    except ValidationError as exc:
        return any(err["loc"][:1] == (name,) for err in exc.errors())
    return False
