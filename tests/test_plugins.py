"""Plug-in tools that need no edit of the project: built-ins and plug-ins through one entry-point group (built-ins in
the order the shipped adapters were trained on), the ``@tool`` decorator, the contract check, ``macro tools new``
end to end (its own test, an install, ``macro tools list``, the agent calling it), and a plug-in's new modality."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from macro.artifacts import ArtifactStore
from macro.case import load_case
from macro.cli import app
from macro.errors import CaseError, MacroError
from macro.tools import registry as registry_module
from macro.tools.contract import ContractError, check_tool, problems
from macro.tools.executor import ToolExecutor
from macro.tools.registry import Registry

# The registry's order before the built-ins moved to entry points: the prompt the shipped adapters were trained on.
TRAINED = [
    "describe_scan",
    "render_slice",
    "measure_volume",
    "crop_resample",
    "segment_brain_tumor",
    "classify_lesion",
    "classify_findings",
    "score_anomaly",
    "answer_stepwise",
]
CT = get_testdata_file("CT_small.dcm")


def write_module(folder: Path, name: str, source: str, monkeypatch) -> object:
    """Write ``name.py`` into ``folder``, put the folder on the import path (as installing it would, so tool workers
    import it too) and import it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return importlib.import_module(name)


def pip_target(package: Path, site: Path) -> None:
    """``pip install`` a plug-in package into ``site``: no index, no build isolation, nothing downloaded."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation"]
        + ["--target", str(site), str(package)],
        check=True,
        capture_output=True,
    )


def on_path(monkeypatch, site: Path) -> None:
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()


# --- one entry-point group, the built-ins first in their trained order ---------------------------------------------


ORDER_TOOLS = "\n".join(
    f'''
from macro.tools.decorator import tool

@tool(modalities=("ct",))
def {name}() -> str:
    """A tool that only marks its place."""
    return "here."
'''
    for name in ("aaa_first", "bbb_second", "ccc_third")
)


def test_the_builtins_are_entry_points_in_the_trained_order(home):
    builtins, _ = registry_module.ordered_entry_points()
    assert [ep.name for ep in builtins] == TRAINED
    assert {registry_module.distribution(ep) for ep in builtins} == {"macro-agent"}
    assert [t.name for t in Registry.default().all()][: len(TRAINED)] == TRAINED


def test_third_party_tools_follow_by_distribution_then_name(tmp_path, monkeypatch, home):
    write_module(tmp_path / "src", "order_tools", ORDER_TOOLS, monkeypatch)
    site = tmp_path / "site"
    for dist, names in {"zeta-tools": ["aaa_first"], "alpha-tools": ["ccc_third", "bbb_second"]}.items():
        info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        lines = [f"{n} = order_tools:{n}" for n in names]
        (info / "entry_points.txt").write_text("[macro.tools]\n" + "\n".join(lines) + "\n")
    on_path(monkeypatch, site)
    registry = Registry.default()
    assert [t.name for t in registry.all()] == [*TRAINED, "bbb_second", "ccc_third", "aaa_first"]
    assert registry.problems == []


def test_a_stale_install_without_builtin_entry_points_is_one_clear_error(monkeypatch, home):
    plugin_only = [EntryPoint("estimate_snr", "macro_snr:estimate_snr", "macro.tools")]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: plugin_only)
    with pytest.raises(MacroError, match=r"declares no built-in tools.*pip install --no-deps -e \."):
        Registry.default()
    result = CliRunner().invoke(app, ["tools", "list"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: the installed metadata of macro-agent declares no built-in tools")


# --- the @tool decorator -------------------------------------------------------------------------------------------

DECORATED = '''
from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field

from macro.case import Case
from macro.tools.base import ToolContext, ToolExample, ToolResult
from macro.tools.decorator import tool


@tool(
    modalities=("ct", "mr"),
    dims=(2, 3),
    deterministic=True,
    cases=("wheel:pydicom/data/test_files/CT_small.dcm",),
    examples=(
        "What fraction of the scan is bright?",
        ToolExample(request="Fraction above the 90th percentile?", args={"quantile": 0.9}),
        "how much of the image is bright",
        "Bright fraction, please.",
        "Wie viel vom Bild ist hell?",
    ),
)
def bright_fraction(
    case: Case,
    quantile: Annotated[float, Field(ge=0.5, le=0.99, description="the quantile that counts as bright")] = 0.75,
    label: str = "bright",
) -> str:
    """Fraction of voxels above an intensity quantile.

    The rest of the docstring is not shown to the policy.
    """
    values = np.asarray(case.image).reshape(-1)
    fraction = float((values > np.quantile(values, quantile)).mean())
    return f"{100 * fraction:.1f} % of the voxels are {label} (above the {quantile:g} quantile)."


@tool(modalities=("*",), cases=("wheel:pydicom/data/test_files/CT_small.dcm",))
def wrong_return(ctx: ToolContext) -> ToolResult:
    """Returns neither a ToolResult nor a text."""
    return 42
'''


@pytest.fixture
def decorated(tmp_path, monkeypatch):
    return write_module(tmp_path / "plugin", "decorated_tools", DECORATED, monkeypatch)


def test_the_decorator_makes_a_tool_class_bound_to_the_function_name(decorated):
    from langchain_core.utils.function_calling import convert_to_openai_tool

    from macro.tools.base import MacroTool

    cls = decorated.bright_fraction
    assert isinstance(cls, type) and issubclass(cls, MacroTool) and cls.__qualname__ == "bright_fraction"
    tool = cls()
    assert tool.name == "bright_fraction"
    assert tool.description == "Fraction of voxels above an intensity quantile."
    assert tool.spec.deterministic and tool.spec.modalities == ("ct", "mr")
    assert [e.args for e in tool.spec.examples][:2] == [{}, {"quantile": 0.9}]
    fn = convert_to_openai_tool(tool)["function"]
    assert set(fn["parameters"]["properties"]) == {"quantile", "label"}  # the case is injected, not shown
    quantile = fn["parameters"]["properties"]["quantile"]
    assert quantile["default"] == 0.75 and quantile["minimum"] == 0.5 and quantile["maximum"] == 0.99
    assert quantile["description"] == "the quantile that counts as bright"
    assert fn["parameters"]["properties"]["label"]["default"] == "bright"
    assert cls.function.__name__ == "bright_fraction"  # the plain function, for unit tests


def test_a_decorated_tool_pickles_and_runs_in_a_worker_on_a_real_scan(decorated, tmp_path):
    import pickle

    tool = decorated.bright_fraction()
    assert type(pickle.loads(pickle.dumps(tool))) is type(tool)
    assert pickle.loads(pickle.dumps(tool.args_schema(quantile=0.9))).quantile == 0.9
    registry = Registry([tool, decorated.wrong_return()])
    executor = ToolExecutor(registry, ArtifactStore(tmp_path / "art"), cache=False, isolate=True)
    case = load_case(CT)
    _, step, _ = executor.run({"name": "bright_fraction", "args": {"quantile": 0.9}, "id": "a"}, case, [])
    assert step.ok, step.error
    assert step.headline.endswith("% of the voxels are bright (above the 0.9 quantile).")
    _, bad, _ = executor.run({"name": "bright_fraction", "args": {"quantile": 2}, "id": "b"}, case, [])
    assert not bad.ok and bad.error.startswith("invalid arguments for bright_fraction: quantile")
    _, wrong, _ = executor.run({"name": "wrong_return", "args": {}, "id": "c"}, case, [])
    assert not wrong.ok and "returned a int; a tool function returns a ToolResult or str" in wrong.error


def _define(source: str):
    namespace: dict = {"__name__": "defined_in_a_test"}
    exec(textwrap.dedent(source), namespace)


@pytest.mark.parametrize(
    "source, problem",
    [
        ("@tool(modalities=('ct',))\ndef no_doc(case: Case) -> str:\n    return ''", "give it a docstring"),
        ("@tool(modalities=('ct',))\ndef untyped(case: Case, n) -> str:\n    '''N.'''", "'n' needs a type annotation"),
        ("@tool(modalities=('ct',))\ndef star(case: Case, *n: int) -> str:\n    '''N.'''", "plain named parameter"),
        ("@tool(modalities=('ct',))\ndef Bad(case: Case) -> str:\n    '''N.'''", "name must be snake_case"),
        ("@tool(modalities=('oct',))\ndef oct_only(case: Case) -> str:\n    '''N.'''", "unknown modality 'oct'"),
        ("@tool(modalities=('ct',), outputs={'x': 'thickness'})\ndef kind(case: Case) -> str:\n    '''N.'''", "kind"),
        ("@tool(modalities=('ct',), dims=(4,), cases='x')\ndef spec(case: Case) -> str:\n    '''N.'''", "invalid spec"),
        (
            "@tool(modalities=('ct',), examples=[{'request': 'r', 'args': {'n': 'many'}}])\n"
            "def bad_example(case: Case, n: int = 1) -> str:\n    '''N.'''",
            "valid integer",
        ),
        ("@tool(modalities=('ct',), exmples=['r'])\ndef typo(case: Case) -> str:\n    '''N.'''", "exmples"),
    ],
)
def test_a_malformed_decorated_tool_fails_at_definition_naming_it(source, problem):
    header = "from macro.case import Case\nfrom macro.tools.decorator import tool\n"
    with pytest.raises(TypeError, match=problem) as raised:
        _define(header + source)
    assert source.split("def ")[1].split("(")[0] in str(raised.value)  # the message names the function


# --- the contract check --------------------------------------------------------------------------------------------

BROKEN = '''
import random

import numpy as np

from macro.tools.base import ToolContext, ToolResult
from macro.tools.decorator import tool


@tool(modalities=("*",), deterministic=True, cases=("wheel:pydicom/data/test_files/CT_small.dcm",), examples=["r"])
def noisy_render(ctx: ToolContext, gain: float = 1.0) -> ToolResult:
    """Claims to be deterministic, writes an artifact kind it does not declare."""
    art = ctx.store.save_png(np.zeros((4, 4, 3), np.uint8), "render", "x")
    return ToolResult(text=f"value {random.random()}.", artifacts=[art.ref()])
'''


def test_the_contract_lists_every_problem_of_a_broken_tool(tmp_path, monkeypatch):
    module = write_module(tmp_path / "plugin", "broken_tools", BROKEN, monkeypatch)
    found = problems(module.noisy_render)
    assert any("spec.examples has 1 request(s)" in p for p in found), found
    assert any("wrote a 'render' artifact; spec.outputs declares none" in p for p in found), found
    assert any("deterministic is set but two calls gave different results" in p for p in found), found
    assert len(found) == 3, found
    with pytest.raises(ContractError, match="tool noisy_render breaks the MACRO tool contract"):
        check_tool(module.noisy_render)


TAKEN = """
from macro.tools.decorator import tool


@tool(modalities=("*",), cases=("wheel:pydicom/data/test_files/CT_small.dcm",), examples=["a", "b", "c", "d", "e"])
def describe_scan() -> str:
    \"\"\"A second tool under a built-in's name.\"\"\"
    return "described."
"""


def test_the_contract_refuses_a_name_another_tool_has(tmp_path, monkeypatch, home):
    module = write_module(tmp_path / "plugin", "taken_tools", TAKEN, monkeypatch)
    assert problems(module.describe_scan) == ["its name is taken by macro.tools.imaging.DescribeScan"]


def test_the_contract_refuses_a_tool_a_worker_cannot_import():
    from macro.tools.decorator import tool

    @tool(modalities=("ct",), cases=("wheel:pydicom/data/test_files/CT_small.dcm",), examples=["a", "b", "c", "d", "e"])
    def local_tool() -> str:
        """Defined inside a function, so no worker can import it."""
        return "x."

    (problem,) = problems(local_tool)
    assert problem.startswith("it does not pickle") and "top level of an importable module" in problem


# --- macro tools new, end to end -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scaffolded(tmp_path_factory):
    """``macro tools new`` a package and install it into a folder (as ``pip install --target`` would ship it)."""
    root = tmp_path_factory.mktemp("scaffold")
    result = CliRunner().invoke(app, ["tools", "new", "plug_stats", "--out", str(root / "pkg")])
    assert result.exit_code == 0, result.output
    created = sorted(str(Path(line).relative_to(root / "pkg")) for line in result.stdout.split())
    pip_target(root / "pkg", root / "site")
    return SimpleNamespace(root=root, pkg=root / "pkg", site=root / "site", home=root / "home", created=created)


def test_macro_tools_new_makes_a_package_whose_own_test_passes(scaffolded):
    assert scaffolded.created == ["README.md", "macro_plug_stats.py", "pyproject.toml", "tests/test_plug_stats.py"]
    assert 'plug_stats = "macro_plug_stats:plug_stats"' in (scaffolded.pkg / "pyproject.toml").read_text()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(scaffolded.pkg)],
        capture_output=True,
        text=True,
        cwd=scaffolded.root,
        env={**os.environ, "MACRO_HOME": str(scaffolded.home)},
    )
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout + run.stderr


def test_an_installed_scaffold_is_listed_and_warned_untrained(scaffolded):
    run = subprocess.run(
        [sys.executable, "-m", "macro.cli", "tools", "list", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(scaffolded.site), "MACRO_HOME": str(scaffolded.home)},
    )
    assert run.returncode == 0, run.stderr
    rows = {row["name"]: row for row in json.loads(run.stdout)["tools"]}
    assert list(rows)[: len(TRAINED)] == TRAINED and list(rows)[-1] == "plug_stats"
    assert rows["plug_stats"]["embedded_policy_trained"] is False
    assert "was not trained on plug_stats" in run.stderr


@pytest.mark.parametrize(
    "name, out, problem",
    [
        ("Plug-Stats", "fresh", "use snake_case"),
        ("describe_scan", "fresh", "'describe_scan' is already registered"),
        ("other_stats", "taken", "exists and is not an empty folder"),
    ],
)
def test_macro_tools_new_refuses_a_bad_name_or_a_used_folder(tmp_path, home, name, out, problem):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    result = CliRunner().invoke(app, ["tools", "new", name, "--out", str(tmp_path / out)])
    assert result.exit_code == 2 and problem in result.stderr
    assert not (tmp_path / "fresh").exists() and (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_the_agent_calls_an_installed_plugin_with_no_change_to_the_project(scaffolded, tmp_path, monkeypatch, home):
    from macro.agent.graph import Agent
    from macro.agent.policy import make_policy
    from macro.config import Home

    on_path(monkeypatch, scaffolded.site)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([{"name": "plug_stats", "args": {"percentile": 95}}]))
    policy, policy_id = make_policy(f"scripted:{plan}")
    turn = Agent(policy, policy_id, home=Home(home)).ask(load_case(CT), "Intensity statistics, please.")
    (step,) = turn.trajectory.steps
    assert step["tool"] == "plug_stats" and step["ok"], step
    assert step["args"] == {"percentile": 95.0} and step["headline"].startswith("The median intensity is ")
    assert step["headline"] in turn.answer


# --- a plug-in's own modality and artifact kind --------------------------------------------------------------------

OCT_PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "macro-oct-test"
version = "0.1.0"

[project.entry-points."macro.modalities"]
oct = "macro_oct_test"

[project.entry-points."macro.artifact_kinds"]
thickness-map = "macro_oct_test"

[project.entry-points."macro.tools"]
retina_thickness = "macro_oct_test:retina_thickness"

[tool.setuptools]
py-modules = ["macro_oct_test"]
"""

OCT_MODULE = '''
import numpy as np

from macro.tools.base import ToolContext, ToolResult
from macro.tools.decorator import tool


@tool(modalities=("oct",), dims=(2,), outputs={"map": "thickness-map"})
def retina_thickness(ctx: ToolContext) -> ToolResult:
    """Thickness of the bright retinal band per A-scan (column), in pixels."""
    image = ctx.case.channel()
    thickness = (image > image.mean()).sum(axis=0)
    picture = np.repeat((thickness * 4).clip(0, 255).astype(np.uint8)[None, :, None], 3, axis=-1)
    art = ctx.store.save_png(picture, "thickness-map", "thickness")
    text = f"The mean retinal thickness is {thickness.mean():.1f} pixels."
    return ToolResult(text=text, artifacts=[art.ref()])
'''


def test_a_plugin_declares_a_modality_that_cases_load_with_and_tools_are_gated_by(tmp_path, monkeypatch, home):
    scan = tmp_path / "bscan.png"
    picture = np.full((64, 96), 20, np.uint8)
    picture[24:40] = 200  # a bright band, as a retina in an OCT B-scan
    Image.fromarray(picture).save(scan)
    with pytest.raises(CaseError, match="unknown modality 'oct'.*macro.modalities"):
        load_case(scan, modality="oct")

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "pyproject.toml").write_text(OCT_PYPROJECT)
    (tmp_path / "pkg" / "macro_oct_test.py").write_text(OCT_MODULE)
    pip_target(tmp_path / "pkg", tmp_path / "site")
    on_path(monkeypatch, tmp_path / "site")

    case = load_case(scan, modality="oct")
    assert case.modality == "oct"
    registry = Registry.default()
    offered = [t.name for t in registry.for_case(case)]
    assert {"retina_thickness", "describe_scan", "render_slice"} <= set(offered)  # its own, and any-modality tools
    assert not {"classify_lesion", "classify_findings", "answer_stepwise", "segment_brain_tumor"} & set(offered)
    assert "retina_thickness" not in [t.name for t in registry.for_case(load_case(CT))]

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([{"name": "retina_thickness", "args": {}}]))
    result = CliRunner().invoke(
        app,
        ["ask", str(scan), "How thick is the retina?", "--modality", "oct", "--policy", f"scripted:{plan}", "--json"],
    )
    assert result.exit_code == 0, result.output
    (step,) = json.loads(result.stdout)["trajectory"]["steps"]
    assert step["ok"] and step["headline"] == "The mean retinal thickness is 16.0 pixels.", step
    (art,) = step["outputs"]
    assert json.loads((home / "artifacts" / f"{art}.json").read_text())["kind"] == "thickness-map"
