"""The shape of the house: imports run one way between packages, every command is guarded and documented, and the
CLI's options agree with the config dataclasses they feed."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import click
import pytest
import typer.main

ROOT = Path(__file__).resolve().parents[1]
# A package may import only packages of a lower layer (pyproject maps each folder into ``macro.*``; ``macro/`` is the
# core, ``ui/`` and ``mcp_server/`` sit above the rest and ``macro/cli`` is the top). docs/architecture.md draws
# the same layers.
LAYERS = {
    "core": 0,
    "tools": 1,
    "skills": 2,
    "memory": 2,
    "agent": 3,
    "federated": 4,
    "eval": 5,
    "training": 6,
    "ui": 7,
    "mcp_server": 7,
    "cli": 8,
}
FOLDERS = {"agent", "tools", "skills", "memory", "training", "eval", "federated", "ui", "mcp_server"}
ON_TOP = {"cli"}  # the subpackage of macro/ above every layer: the command line


def _package_of_module(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "macro":
        return None
    if len(parts) > 1 and parts[1] in FOLDERS:
        return parts[1]
    return parts[1] if len(parts) > 1 and parts[1] in ON_TOP else "core"


def _package_of_file(path: Path) -> str:
    rel = path.relative_to(ROOT).parts
    if rel[0] in FOLDERS:
        return rel[0]
    return rel[1] if len(rel) > 1 and rel[1] in ON_TOP else "core"


def _imports() -> list[tuple[str, str, str]]:
    """(importing package, imported package, file:line) for every import, including those inside functions."""
    found = []
    for folder in ("macro", *sorted(FOLDERS)):
        for path in sorted((ROOT / folder).rglob("*.py")):
            source = _package_of_file(path)
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                for name in names:
                    target = _package_of_module(name)
                    if target is not None and target != source:
                        found.append((source, target, f"{path.relative_to(ROOT)}:{node.lineno}"))
    return found


def test_package_imports_run_down_the_layers_only():
    wrong = [f"{where}: {src} imports {dst}" for src, dst, where in _imports() if LAYERS[dst] >= LAYERS[src]]
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_layer_check_sees_imports_inside_functions():
    """The check must not pass merely because the AST walk misses nested imports."""
    inner = [where for src, dst, where in _imports() if where.startswith("macro/cli/tools.py")]
    assert inner, "macro/cli/tools.py imports the agent and the tools inside its commands"


def _commands(group: click.Command, prefix: tuple[str, ...] = ()):
    if isinstance(group, click.Group):
        for name, sub in group.commands.items():
            yield from _commands(sub, (*prefix, name))
    else:
        yield " ".join(prefix), group


@pytest.fixture(scope="module")
def cli():
    from macro.cli import app

    return dict(_commands(typer.main.get_command(app)))


def test_every_command_is_behind_the_error_guard():
    from macro.cli import app
    from macro.cli.common import GUARDED

    def callbacks(root):
        for info in root.registered_commands:
            yield info.callback
        for sub in root.registered_groups:
            yield from callbacks(sub.typer_instance)

    unguarded = [cb.__name__ for cb in callbacks(app) if not getattr(cb, GUARDED, False)]
    assert not unguarded


def _readme_commands() -> set[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return {m.group(1) for m in re.finditer(r"^macro ([a-z][a-z-]*(?: [a-z][a-z-]*)?)", block, re.M)}


def test_readme_lists_every_command_and_no_other(cli):
    listed = _readme_commands()
    assert not set(cli) - listed, f"commands missing from the README: {sorted(set(cli) - listed)}"
    assert not listed - set(cli), f"README commands that do not exist: {sorted(listed - set(cli))}"


def _option_defaults(command: click.Command) -> dict[str, object]:
    return {p.name: p.default for p in command.params if isinstance(p, click.Option)}


def _config_defaults() -> dict[str, dict[str, object]]:
    """Command -> {option: the default of the config field or function parameter it feeds}."""
    from macro.agent.loop import MAX_STEPS
    from macro.eval.bench.run import BenchConfig
    from macro.federated.run import train_task
    from macro.skills.mine import MineConfig
    from macro.tools.segmentation.train import SegTrainConfig
    from macro.tools.segmentation.tta import TTAConfig
    from macro.training.sft import SFTRecipe

    task_defaults = {k: v.default for k, v in inspect.signature(train_task).parameters.items()}
    return {
        "train sft": {n: getattr(SFTRecipe, n) for n in ("epochs", "max_steps", "seed", "eval_prompts")},
        "train score": {"requests": SFTRecipe.eval_prompts},
        "train segmentation": {n: getattr(SegTrainConfig, n) for n in ("iterations", "n_train", "seed")},
        "skills mine": {"min_support": MineConfig.min_support},
        "bench": {"workers": BenchConfig.workers},
        "fl train": {n: task_defaults[n] for n in ("method", "rounds", "seed")},
        "eval segmentation": {"steps": TTAConfig.steps},
        "ask": {"max_steps": MAX_STEPS},
        "chat": {"max_steps": MAX_STEPS},
    }


CONFIGURED = (
    "train sft",
    "train score",
    "train segmentation",
    "skills mine",
    "bench",
    "fl train",
    "eval segmentation",
    "ask",
    "chat",
)


@pytest.mark.parametrize("path", CONFIGURED)
def test_cli_option_defaults_are_the_config_defaults(cli, path):
    expected = _config_defaults()[path]
    actual = _option_defaults(cli[path])
    assert {name: actual[name] for name in expected} == expected
