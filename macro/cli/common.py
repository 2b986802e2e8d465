"""What every command group shares: the root app, the error guard, common options, loading a scan, printing steps.

Progress and streamed steps go to stderr, results to stdout, so ``--json`` output can be piped.
"""

from __future__ import annotations

import functools
import shlex
from pathlib import Path

import click
import typer

from macro.errors import MacroError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="MACRO: a self-evolving medical imaging agent, offline-first.",
)

CASE_HELP = "scan: file, DICOM/BraTS folder, or four comma-separated NIfTI (T1,T1ce,T2,FLAIR)"
PolicyOpt = typer.Option(
    "embedded", "--policy", "-p", help="embedded | embedded:sft | hf:PATH | openai:URL | scripted | scripted:PLAN.json"
)
ModelOpt = typer.Option(None, "--model", help="model name for openai:URL (default: $MACRO_OPENAI_MODEL)")
ModalityOpt = typer.Option(None, "--modality", help="override the detected modality (mri-multiseq, mr, ct, xray, ...)")
JsonOpt = typer.Option(False, "--json", help="print one JSON object")
GUARDED = "__macro_guarded__"


def group(name: str, help: str) -> typer.Typer:
    """A command group (``macro NAME ...``) registered on the root app."""
    sub = typer.Typer(no_args_is_help=True, help=help)
    app.add_typer(sub, name=name)
    return sub


def err(message: str) -> None:
    typer.echo(message, err=True)


DEBUG = {"on": False}  # set by ``macro --debug``


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="show the traceback of an error (developers)")) -> None:
    """MACRO: a self-evolving medical imaging agent, offline-first."""
    DEBUG["on"] = debug


def guarded(fn):
    """A user-facing error becomes one line on stderr and its exit code (2 bad input or damaged weights, 3 a missing
    model) instead of a traceback; any other exception is an internal error, one line too (exit 1). ``--debug``
    shows the traceback instead. Tracebacks never show local variables (they may hold a scan's header)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MacroError as exc:
            if DEBUG["on"]:
                raise
            err(f"error: {exc}")
            raise typer.Exit(exc.exit_code) from None
        except (typer.Exit, typer.Abort, click.ClickException, KeyboardInterrupt):
            raise
        except Exception as exc:
            if DEBUG["on"]:
                raise
            err(f"internal error: {type(exc).__name__}: {str(exc)[:300]} (rerun with macro --debug for the traceback)")
            raise typer.Exit(1) from None

    setattr(wrapper, GUARDED, True)
    return wrapper


def guard_all(root: typer.Typer) -> None:
    """Put every command of ``root`` and of its groups behind :func:`guarded`, so none can be missed."""
    for info in root.registered_commands:
        if not getattr(info.callback, GUARDED, False):
            info.callback = guarded(info.callback)
    for sub in root.registered_groups:
        guard_all(sub.typer_instance)


def invocation() -> str:
    """The running command with the values that differ from their defaults, recorded in the manifests of what it
    trains. Absolute paths are written as the weights module records folders (under ``$MACRO_HOME``, or by name), so
    a manifest does not carry the building machine's folders."""
    from macro.weights import portable

    ctx = click.get_current_context()
    words = ["macro", *ctx.command_path.split()[1:]]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value == param.default or value == () or value is False:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        shown = [portable(v) if isinstance(v, Path) and v.is_absolute() else str(v) for v in values]
        if isinstance(param, click.Argument):
            words += shown
        elif value is True:
            words.append(param.opts[0])
        else:
            words += [w for v in shown for w in (param.opts[0], v)]
    return " ".join(shlex.quote(w) for w in words)


def load_scan(case: str, modality: str | None):
    """The scan, its voxels checked before any agent work where the tools will read them (a tool worker)."""
    from macro.case import load_case
    from macro.tools.worker import check_voxels, on_voxels

    sources = [case] if Path(case).expanduser().exists() else case.split(",")  # a comma may be part of a file name
    scan = load_case(sources if len(sources) > 1 else sources[0], modality=modality, check=False)
    on_voxels(check_voxels, scan)
    return scan


def print_step(step) -> None:
    outcome = step.summary if step.ok else f"FAILED: {step.error}"
    err(f"  -> {step.call} [{step.ms:.0f} ms] {outcome}")


def make_agent(policy: str, model: str | None, max_steps: int):
    from macro.agent.graph import Agent
    from macro.agent.policy import make_policy

    chat, policy_id = make_policy(policy, model=model)
    agent = Agent(chat, policy_id, max_steps=max_steps)
    if policy in ("embedded", "embedded:sft"):
        from macro.agent.local_llm import coverage_warning, untrained_tools

        line = coverage_warning(untrained_tools(agent.registry))
        if line:
            err(line)
    return agent


def wrote(files) -> None:
    err("wrote " + ", ".join(map(str, files)))


def publish(report: dict, out: Path, as_json: bool, write_report, markdown) -> None:
    """An evaluation's report: its files written under ``out``, the JSON or the markdown table on stdout."""
    import json

    files = write_report(report, out)
    typer.echo(json.dumps(report) if as_json else markdown(report))
    wrote(files)


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> ``(0, 1, 2)``; anything else is a usage error naming the option."""
    try:
        seeds = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint="--seeds") from None
    if len(set(seeds)) != len(seeds):
        raise typer.BadParameter(f"seeds repeat in {text!r}", param_hint="--seeds")
    return seeds
