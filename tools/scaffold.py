"""``macro tools new``: a plug-in package that works as generated, for its author to change.

It holds one tool made with :func:`~macro.tools.decorator.tool` that computes something real (robust intensity
statistics), a spec with example requests in several users' words and example cases shipped in wheels (so the
embedded policy can be retrained on it at once), the ``macro.tools`` entry point that registers it, a README and a
test that runs the contract check (:func:`~macro.tools.contract.check_tool`).
"""

from __future__ import annotations

import importlib.util
import keyword
from pathlib import Path
from string import Template

from macro.errors import MacroError
from macro.tools.base import TOOL_NAME
from macro.tools.registry import Registry

PYPROJECT = Template("""\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "A MACRO plug-in tool: $name."
requires-python = ">=3.10"
dependencies = ["numpy>=1.26"]  # and MACRO itself (macro-agent), installed beside it

[project.entry-points."macro.tools"]
$name = "$module:$name"

[tool.setuptools]
py-modules = ["$module"]

[tool.pytest.ini_options]
pythonpath = ["."]
testpaths = ["tests"]

[tool.ruff]
line-length = 120
""")

MODULE = Template('''\
"""$name: a MACRO plug-in tool, made by ``macro tools new``.

Robust intensity statistics of a scan: the median and interquartile range of its voxels and an upper percentile,
which a few extreme voxels do not move. Replace the computation with yours. The docstring's first line is the
description the policy reads (keep it short); the examples are requests in users' own words, from which the embedded
policy learns when to call the tool and with which arguments (``macro train sft``; every fifth is held out to test
it); the cases are scans the tool is run on in its contract test and in training.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from macro.case import Case
from macro.tools.base import ANY_MODALITY, ToolExample, ToolResult
from macro.tools.decorator import tool
from pydantic import Field


@tool(
    modalities=(ANY_MODALITY,),
    dims=(2, 3),
    outputs={"statistics": "scalar"},
    deterministic=True,
    version="0.1.0",
    cases=("wheel:pydicom/data/test_files/CT_small.dcm", "wheel:nibabel/tests/data/anatomical.nii"),
    examples=(
        "What are the intensity statistics of this scan?",
        "median intensity?",
        "Give me a robust summary of the voxel values, ignoring outliers.",
        "How bright is this image overall?",
        ToolExample(request="What is the 95th percentile of the intensities?", args={"percentile": 95}),
        "Summarise the grey values for me please",
        "Wie verteilen sich die Intensitäten in diesem Bild?",
        "intensity IQR",
        "Quelle est l'intensité médiane de l'image ?",
        ToolExample(request="Report the 99.5th percentile intensity.", args={"percentile": 99.5}),
    ),
)
def $name(
    case: Case,
    percentile: Annotated[float, Field(ge=50, le=100, description="the upper percentile to report")] = 99.0,
) -> ToolResult:
    """Robust intensity statistics of the scan: median, interquartile range and an upper percentile."""
    values = np.asarray(case.channel(), dtype=np.float64).reshape(-1)
    q1, median, q3, upper = (float(v) for v in np.percentile(values, (25, 50, 75, percentile)))
    headline = (
        f"The median intensity is {median:.1f} (interquartile range {q1:.1f} to {q3:.1f}; "
        f"percentile {percentile:g}: {upper:.1f})."
    )
    caveats = []
    if len(case.channels) > 1:
        caveats.append(f"Computed on {case.channels[0]}, the first of its channels ({', '.join(case.channels)}).")
    data = {"median": round(median, 3), "q1": round(q1, 3), "q3": round(q3, 3), "upper": round(upper, 3)}
    return ToolResult(text=headline, headline=headline, caveats=caveats, data={**data, "percentile": percentile})
''')

TEST = Template('''\
"""$name meets the MACRO tool contract: definition, schema, examples, pickling, and real calls through the
agent's executor on its example cases (about 15 s)."""

from macro.tools.contract import check_tool

from $module import $name


def test_${name}_meets_the_tool_contract():
    check_tool($name)
''')

README = Template("""\
# $dist

A MACRO plug-in tool, `$name`: robust intensity statistics of a scan (median, interquartile range, an upper
percentile). Made by `macro tools new $name`; change `$module.py` to compute what you need.

```bash
pip install --no-deps -e .      # registers the tool (entry point in the group macro.tools)
macro tools list                # lists $name and warns that the embedded policy was not trained on it
pytest                          # the contract test: the tool runs through MACRO's executor on its example cases
macro train sft                 # retrain the embedded policy with the tool's example requests
```

* The function's name is the tool's name and its docstring's first line the description the policy reads.
* Its typed parameters (after the `Case`) are the arguments the policy may set; `Annotated[..., Field(...)]` adds
  bounds and a description.
* `examples`: requests in different users' words, with the arguments they map to. The embedded policy learns the
  tool from them; every fifth is held out to test it, so write at least ten.
* `cases`: example scans it runs on in the test and in training (`wheel:package/path` for a scan shipped in an
  installed wheel, or a `macro data make` dataset name).
* `deterministic=True` lets the agent reuse a cached result; set it only if the same scan always gives the same
  result.

See MACRO's docs/adding-a-tool.md.
""")


def scaffold(name: str, out: Path) -> list[Path]:
    """Write the plug-in package for a tool called ``name`` into ``out`` (absent or empty); return its files."""
    module = f"macro_{name}"
    if not TOOL_NAME.match(name) or keyword.iskeyword(name):
        raise MacroError(
            f"tool name {name!r}: use snake_case, 3-48 characters, starting with a letter, not a Python keyword "
            "(e.g. intensity_stats)"
        )
    if name in Registry.default():
        raise MacroError(f"tool name {name!r} is already registered (see macro tools list); choose another")
    if importlib.util.find_spec(module) is not None:
        raise MacroError(f"tool name {name!r}: a module named {module} is already importable; choose another")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MacroError(f"{out}: exists and is not an empty folder; give a new one")
    values = {"name": name, "module": module, "dist": f"macro-tool-{name.replace('_', '-')}"}
    files = {
        out / "pyproject.toml": PYPROJECT,
        out / f"{module}.py": MODULE,
        out / "tests" / f"test_{name}.py": TEST,
        out / "README.md": README,
    }
    for path, template in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.substitute(values))
    return list(files)
