"""Tool registry: built-ins and third-party tools, all from the ``macro.tools`` entry-point group.

An entry point may name a ``MacroTool`` subclass, an instance, or a zero-argument callable returning either or a
list of them. The project declares its own tools there too, so a plug-in is found exactly as a built-in is. A broken
plug-in is reported and skipped; it never stops the agent from starting.
"""

from __future__ import annotations

import logging
import re
from importlib.metadata import EntryPoint, entry_points
from typing import Iterable, Mapping

from macro.case import Case
from macro.errors import MacroError
from macro.tools.base import MacroTool

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "macro.tools"
DISTRIBUTION = "macro-agent"  # the project's own distribution: its entry points are the built-ins
# The built-ins in the order the shipped adapters saw them in the prompt (which lists a case's tools in registry
# order); entry-point metadata keeps no order. A built-in added later follows these, by name.
TRAINED_ORDER = (
    "describe_scan",
    "render_slice",
    "measure_volume",
    "crop_resample",
    "segment_brain_tumor",
    "classify_lesion",
    "classify_findings",
    "score_anomaly",
    "answer_stepwise",
)
STALE_INSTALL = (
    f"the installed metadata of {DISTRIBUTION} declares no built-in tools (entry-point group {ENTRY_POINT_GROUP}): "
    "the install is older than this checkout's pyproject.toml; reinstall it from the checkout with: "
    "pip install --no-deps -e .  (make setup does this when pyproject.toml changes)"
)


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
        from macro.tools.mcp_client import add_remembered

        registry = cls()
        registry.load_entry_points()
        add_remembered(registry)  # the tools of external MCP servers added with macro tools add-mcp
        return registry

    def add(self, tool: MacroTool) -> None:
        if not isinstance(tool, MacroTool):
            raise TypeError(f"{tool!r} is not a MacroTool")
        if tool.name in self._tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool

    def load_entry_points(self) -> None:
        """The built-ins (which must load: a failure is a broken install), then the plug-ins in a stable order."""
        builtins, plugins = ordered_entry_points()
        for ep in builtins:
            for tool in _instantiate(ep.load()):
                self.add(tool)
        for ep in plugins:
            try:
                for tool in _instantiate(ep.load()):
                    self.add(tool)
            except Exception as exc:  # a third-party plug-in must not take the agent down
                self.problems.append(f"{ep.name} ({ep.value}, from {distribution(ep)}): {type(exc).__name__}: {exc}")
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


def ordered_entry_points() -> tuple[list[EntryPoint], list[EntryPoint]]:
    """The group's built-in entry points in :data:`TRAINED_ORDER` and the others by distribution, then name. Raises
    :data:`STALE_INSTALL` when the project's own metadata declares none (a checkout pulled without reinstalling)."""
    found = entry_points(group=ENTRY_POINT_GROUP)
    rank = {name: i for i, name in enumerate(TRAINED_ORDER)}
    builtins = sorted(
        (ep for ep in found if distribution(ep) == DISTRIBUTION), key=lambda ep: (rank.get(ep.name, len(rank)), ep.name)
    )
    if not builtins:
        raise MacroError(STALE_INSTALL)
    plugins = sorted(
        (ep for ep in found if distribution(ep) != DISTRIBUTION), key=lambda ep: (distribution(ep), ep.name)
    )
    return builtins, plugins


def distribution(ep: EntryPoint) -> str:
    """The normalised name of the distribution declaring ``ep`` (PEP 503), or "" for one made by hand."""
    return re.sub(r"[-_.]+", "-", ep.dist.name).lower() if ep.dist is not None else ""


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
