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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, model_home):
    """A randomly initialised 2-layer Llama with SmolLM2's tokenizer and chat template: real code paths, fast."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from macro.agent.local_llm import BASE_NAME

    torch.manual_seed(0)  # the same random model on every machine, so what it writes is reproducible
    folder = tmp_path_factory.mktemp("tiny-llm")
    tok = AutoTokenizer.from_pretrained(model_home.models / BASE_NAME)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=2048,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            tie_word_embeddings=True,
        )
    )
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture
def one_thread():
    """Tiny models run fastest (and share a busy machine best) on one intra-op thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
