"""Tool registry: built-ins plus third-party tools from the ``macro.tools`` entry-point group.

An entry point may name a ``MacroTool`` subclass, an instance, or a zero-argument callable returning either or a
list of them. A broken plug-in is reported and skipped; it never stops the agent from starting.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Iterable, Mapping

from macro.case import Case
from macro.tools.base import MacroTool

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "macro.tools"


class Registry:
    def __init__(self, tools: Iterable[MacroTool] = ()):
        self._tools: dict[str, MacroTool] = {}
        self.problems: list[str] = []
        for tool in tools:
            self.add(tool)

    @classmethod
    def default(cls) -> "Registry":
        """Built-ins and plug-ins. Composites come from the skill library, which adds them to a registry
        (:func:`macro.skills.library.load_composites`); the registry never reads the library itself."""
        from macro.tools.anomaly.tool import ScoreAnomaly
        from macro.tools.classification.tool import ClassifyFindings, ClassifyLesion
        from macro.tools.imaging import BUILTINS
        from macro.tools.segmentation.tool import SegmentBrainTumor
        from macro.tools.vqa.tool import AnswerStepwise

        builtins = (*BUILTINS, SegmentBrainTumor, ClassifyLesion, ClassifyFindings, ScoreAnomaly, AnswerStepwise)
        registry = cls(tool() for tool in builtins)
        registry.load_entry_points()
        return registry

    def add(self, tool: MacroTool) -> None:
        if not isinstance(tool, MacroTool):
            raise TypeError(f"{tool!r} is not a MacroTool")
        if tool.name in self._tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool

    def load_entry_points(self) -> None:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                for tool in _instantiate(ep.load()):
                    self.add(tool)
            except Exception as exc:  # a third-party plug-in must not take the agent down
                self.problems.append(f"{ep.name} ({ep.value}): {type(exc).__name__}: {exc}")
                log.warning("skipping tool plug-in %s: %s", ep.name, exc)

    def get(self, name: str) -> MacroTool:
        try:
            return self._tools[name]
        except KeyError:
            raise KeyError(f"no tool named {name!r}; known: {', '.join(sorted(self._tools))}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._tools

    def all(self) -> list[MacroTool]:
        return list(self._tools.values())

    def atomic(self) -> dict[str, MacroTool]:
        """Name -> tool for the tools that are not composites (what a composite's steps may call)."""
        return {name: tool for name, tool in self._tools.items() if kind(tool) == "atomic"}

    def for_case(self, case: Case) -> list[MacroTool]:
        """The tools that accept the case's modality and dimensionality and whose inputs the case or another offered
        tool can supply (no volume measurement on a scan that has no mask and nothing to segment it)."""
        return [
            t.for_case(case)
            for t in self._tools.values()
            if t.offered(case) and self.prerequisites(t, case) is not None
        ]

    def prerequisites(self, tool: MacroTool, case: Case, have: frozenset[str] = frozenset()) -> list[str] | None:
        """Names of the calls that must run before ``tool`` on ``case`` when the thread already holds artifacts of
        the kinds in ``have`` (see :func:`plan_inputs`); None when some input cannot be supplied at all."""
        producers = {
            t.name: (t.spec.needs, frozenset(t.spec.outputs.values()))
            for t in self.atomic().values()
            if t.name != tool.name and t.offered(case)
        }
        return plan_inputs(tool.spec.needs, producers, frozenset(have | case.provides))


Producers = Mapping[str, tuple[frozenset[str], frozenset[str]]]


def plan_inputs(needs: frozenset[str], producers: Producers, have: frozenset[str]) -> list[str] | None:
    """The calls that supply ``needs`` not in ``have``: for each missing kind, in name order, the first producer
    (``{name: (needs, outputs)}``, in offer order) that outputs it, after its own prerequisites. None when a kind
    has no producer. A producer is not its own prerequisite, so a cycle in the specs ends in None."""
    plan: list[str] = []
    for needed in sorted(needs):
        if needed in have:  # the case, or a producer planned above, supplies it
            continue
        name = next((n for n, (_, outputs) in producers.items() if needed in outputs), None)
        if name is None:
            return None
        before = plan_inputs(producers[name][0], {n: p for n, p in producers.items() if n != name}, have)
        if before is None:
            return None
        plan += [*before, name]
        have = have.union(*(producers[n][1] for n in [*before, name]))
    return plan


def kind(tool: MacroTool) -> str:
    return "composite" if getattr(type(tool), "definition", None) is not None else "atomic"


def _instantiate(obj) -> list[MacroTool]:
    if isinstance(obj, MacroTool):
        return [obj]
    if isinstance(obj, type) and issubclass(obj, MacroTool):
        return [obj()]
    if callable(obj):
        made = obj()
        return [t for item in (made if isinstance(made, (list, tuple)) else [made]) for t in _instantiate(item)]
    raise TypeError(f"entry point gave {type(obj).__name__}, expected a MacroTool subclass, instance or factory")
