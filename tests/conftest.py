"""Shared fixtures: an isolated MACRO_HOME per test and one demo phantom per session."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "macro-home"
    monkeypatch.setenv("MACRO_HOME", str(root))
    return root


@pytest.fixture(scope="session")
def demo_folder(tmp_path_factory) -> Path:
    from macro.data import make

    return make("brain-mri-demo", tmp_path_factory.mktemp("demo"), n=1, seed=0)[0]


@pytest.fixture(scope="session")
def demo(demo_folder):
    from macro.case import load_case

    return load_case(demo_folder)


@pytest.fixture(scope="session")
def model_home(tmp_path_factory):
    """A home whose converted SmolLM2 is shared by every test that needs the real model (converted once, ~30 s)."""
    from macro.agent.local_llm import embedded_base
    from macro.config import Home

    home = Home(tmp_path_factory.mktemp("model-home"))
    embedded_base(home, quiet=True)
    return home
