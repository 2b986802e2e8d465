"""``@tool``: a typed function becomes a :class:`~macro.tools.base.MacroTool`, for plug-ins that need no class.

The function's name is the tool's name, its docstring's first line the description the policy reads, and its typed
parameters (defaults and ``Annotated[..., Field(...)]`` kept) the arguments' schema; a parameter typed ``Case`` or
``ToolContext`` receives the case or the whole context instead and is not shown to the policy. The decorator returns
the class, bound to the function's name, so pickling finds it by module and name and the tool runs in a spawned
worker like a hand-written one; its arguments' model is ``NAME.Args`` for the same reason, and the function stays
callable as ``NAME.function``. The class is validated when it is made, with the rules of every tool.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Callable, ClassVar

from pydantic import BaseModel, ValidationError, create_model

from macro.case import Case
from macro.tools.base import ANY_MODALITY, MacroTool, ToolContext, ToolExample, ToolResult, ToolSpec

ToolFunction = Callable[..., Any]  # returns a ToolResult or a str
CONTEXT_TYPES = (Case, ToolContext)
NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class FunctionTool(MacroTool):
    """Base of the tools :func:`tool` makes; validated only through them."""

    name: str = "function_tool"
    description: str = "Base class of tools made from a function."
    args_schema: type[BaseModel] = BaseModel
    spec: ClassVar[ToolSpec] = ToolSpec(modalities=(ANY_MODALITY,))
    function: ClassVar[ToolFunction]
    context: ClassVar[tuple[str, type] | None] = None  # the parameter that takes the case or the context, and which

    def execute(self, ctx: ToolContext, args: BaseModel) -> ToolResult:
        kwargs = {name: getattr(args, name) for name in type(args).model_fields}
        if self.context is not None:
            name, wanted = self.context
            kwargs[name] = ctx.case if wanted is Case else ctx
        result = type(self).function(**kwargs)
        if isinstance(result, str):
            return ToolResult(text=result)
        if isinstance(result, ToolResult):
            return result
        raise TypeError(f"{self.name} returned a {type(result).__name__}; a tool function returns a ToolResult or str")


def tool(**spec: Any) -> Callable[[ToolFunction], type[FunctionTool]]:
    """Make the decorated function a tool with the :class:`ToolSpec` fields given here (``modalities`` at least).
    ``examples`` and ``follow_ups`` may be plain request strings (no arguments) or :class:`ToolExample` s."""

    def make(function: ToolFunction) -> type[FunctionTool]:
        return _tool_class(function, spec)

    return make


def _tool_class(function: ToolFunction, spec: dict[str, Any]) -> type[FunctionTool]:
    where = f"tool function {function.__qualname__} ({function.__module__})"
    unknown = sorted(set(spec) - set(ToolSpec.model_fields))
    if unknown:
        raise TypeError(
            f"{where}: unknown @tool field(s) {', '.join(unknown)}; a spec has {list(ToolSpec.model_fields)}"
        )
    fields, context = _parameters(function, where)
    doc = inspect.getdoc(function)
    if not doc:
        raise TypeError(f"{where}: give it a docstring; its first line is the description the policy reads")
    args = create_model(f"{_camel(function.__name__)}Args", __module__=function.__module__, **fields)
    args.__qualname__ = f"{function.__qualname__}.Args"
    for key in ("examples", "follow_ups"):
        if key in spec:
            spec = {**spec, key: tuple(ToolExample(request=e) if isinstance(e, str) else e for e in spec[key])}
    try:
        tool_spec = ToolSpec(**spec)
    except ValidationError as exc:
        raise TypeError(f"{where}: invalid spec: {exc}") from None
    namespace = {
        "__module__": function.__module__,
        "__qualname__": function.__qualname__,
        "__doc__": function.__doc__,
        "__annotations__": {"name": str, "description": str, "args_schema": type[BaseModel]},
        "name": function.__name__,
        "description": doc.splitlines()[0].strip(),
        "args_schema": args,
        "spec": tool_spec,
        "function": staticmethod(function),
        "context": context,
        "Args": args,
    }
    return type(function.__name__, (FunctionTool,), namespace)


def _parameters(function: ToolFunction, where: str) -> tuple[dict[str, Any], tuple[str, type] | None]:
    """The policy-facing fields ``{name: (annotation, default)}`` and the parameter taking the case or context."""
    try:
        hints = typing.get_type_hints(function, include_extras=True)
    except Exception as exc:  # an annotation naming something the module does not define or import
        raise TypeError(f"{where}: its annotations do not resolve: {type(exc).__name__}: {exc}") from None
    fields: dict[str, Any] = {}
    context = None
    for param in inspect.signature(function).parameters.values():
        if param.kind not in NAMED:
            raise TypeError(f"{where}: parameter {param.name!r} must be a plain named parameter (no *, ** or /)")
        if param.name not in hints:
            raise TypeError(f"{where}: parameter {param.name!r} needs a type annotation (the schema is made from it)")
        annotation = hints[param.name]
        if annotation in CONTEXT_TYPES:
            if context is not None:
                raise TypeError(f"{where}: only one parameter may take the Case or the ToolContext")
            context = (param.name, annotation)
            continue
        fields[param.name] = (annotation, ... if param.default is inspect.Parameter.empty else param.default)
    return fields, context


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))
