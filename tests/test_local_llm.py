"""The local chat-model backend: prompt rendering, prefix KV reuse that changes nothing, parse failures."""
from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage
from pydicom.data import get_testdata_file

from macro.agent.local_llm import LocalChatModel
from macro.agent.prompts import system_message
from macro.case import load_case
from macro.tools.registry import Registry


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, model_home):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from macro.agent.local_llm import BASE_NAME

    folder = tmp_path_factory.mktemp("tiny-llm")
    tok = AutoTokenizer.from_pretrained(model_home.models / BASE_NAME)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                         num_key_value_heads=1, max_position_embeddings=2048, eos_token_id=tok.eos_token_id,
                                         pad_token_id=tok.pad_token_id, tie_word_embeddings=True))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_prefix_cache_reuse_gives_identical_output(tiny_model, monkeypatch):
    case = load_case(get_testdata_file("CT_small.dcm"))
    tools = Registry.default().for_case(case)
    messages = [system_message(case.summary()), HumanMessage("Describe this scan.")]
    cached = LocalChatModel(model_path=str(tiny_model), max_new_tokens=12)
    first = cached.bind_tools(tools).invoke(messages)
    second = cached.bind_tools(tools).invoke(messages)
    assert second.response_metadata["cached_prefix_tokens"] > 0 and len(cached._prefixes) == 1
    plain = LocalChatModel(model_path=str(tiny_model), max_new_tokens=12)
    monkeypatch.setattr(LocalChatModel, "_prefix_cache", lambda self, turn, ids: None)
    reference = plain.bind_tools(tools).invoke(messages)
    assert first.response_metadata["raw"] == second.response_metadata["raw"] == reference.response_metadata["raw"]
    assert reference.response_metadata["cached_prefix_tokens"] == 0
