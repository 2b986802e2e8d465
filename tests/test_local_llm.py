"""The local chat-model backend: prompt rendering in the tool-call format, prefix KV reuse that changes nothing,
and the greedy decoder (same tokens as `generate`, forced tokens fed together)."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydicom.data import get_testdata_file

from macro.agent.local_llm import LocalChatModel
from macro.agent.prompts import system_message, to_chat
from macro.agent.toolcall import parse_calls
from macro.case import load_case
from macro.tools.registry import Registry


@pytest.mark.slow
def test_prefix_cache_reuse_gives_identical_output(tiny_model, monkeypatch):
    case = load_case(get_testdata_file("CT_small.dcm"))
    tools = Registry.default().for_case(case)
    messages = [system_message(case.summary()), HumanMessage("Describe this scan.")]
    cached = LocalChatModel(model_path=str(tiny_model), max_new_tokens=12)
    first = cached.bind_tools(tools).invoke(messages)
    second = cached.bind_tools(tools).invoke(messages)
    assert second.response_metadata["cached_prefix_tokens"] > 0
    assert len(cached._prefixes) == 1
    plain = LocalChatModel(model_path=str(tiny_model), max_new_tokens=12)
    monkeypatch.setattr(LocalChatModel, "_prefix_cache", lambda self, turn, ids: None)
    reference = plain.bind_tools(tools).invoke(messages)
    assert first.response_metadata["raw"] == second.response_metadata["raw"] == reference.response_metadata["raw"]
    assert reference.response_metadata["cached_prefix_tokens"] == 0


def test_to_chat_renders_tools_calls_and_results_for_a_local_model():
    case = load_case(get_testdata_file("CT_small.dcm"))
    schemas = [convert_to_openai_tool(t) for t in Registry.default().for_case(case)]
    call = AIMessage(
        "", tool_calls=[{"name": "render_slice", "args": {"axis": "axial"}, "id": "c1", "type": "tool_call"}]
    )
    chat = to_chat(
        [
            system_message(case.summary()),
            HumanMessage("show it"),
            call,
            ToolMessage("Rendered 2D image.", name="render_slice", tool_call_id="c1"),
        ],
        schemas,
    )
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "tool"]
    assert "- render_slice(): Show the scan as a picture" in chat[0]["content"]  # 2D, one channel: no arguments
    assert "measure_volume" not in chat[0]["content"]
    assert "<tool_call>" in chat[0]["content"]
    assert chat[2]["content"] == '<tool_call>{"name": "render_slice", "arguments": {"axis": "axial"}}</tool_call>'
    assert chat[3]["content"] == "render_slice: Rendered 2D image."


@pytest.mark.slow
def test_greedy_decode_matches_generate_and_feeds_forced_tokens_in_one_pass(tiny_model):
    import torch

    from macro.agent.grammar import Constraint
    from macro.agent.local_llm import decode, load_model

    model, tokenizer = load_model(tiny_model)
    ids = tokenizer("Describe this scan.", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        reference = model.generate(input_ids=ids, max_new_tokens=10, min_new_tokens=10, do_sample=False)
        tokens, forwards = decode(model, ids, None, eos=-1, limit=10, lookup=False)
        drafted, _ = decode(model, ids, None, eos=-1, limit=10)
    assert tokens == drafted == reference[0, ids.shape[1] :].tolist()
    assert forwards == 10
    case = load_case(get_testdata_file("CT_small.dcm"))
    tools = [convert_to_openai_tool(t) for t in Registry.default().for_case(case)]
    guide = Constraint(tokenizer).guide(tools)
    opening = tokenizer("<", add_special_tokens=False)["input_ids"]  # a call, not an answer, from here on
    opening += guide.advance(opening[0])
    with torch.inference_mode():
        tokens, forwards = decode(model, ids.new_tensor([ids[0].tolist() + opening]), None, -1, 200, guide)
    text = tokenizer.decode(opening + tokens)
    (parsed,), errors = parse_calls(text)
    assert not errors and parsed["name"] in {t["function"]["name"] for t in tools}
    assert forwards < len(tokens) / 2


class _Cache:
    """Stands in for a KV cache: only its length matters to the decoder."""

    def __init__(self):
        self.length = 0

    def get_seq_length(self):
        return self.length

    def crop(self, n):  # transformers' convention: a negative count of tokens to drop
        assert n < 0 and -n <= self.length
        self.length += n


class _Copier:
    """A scripted model: after token t it predicts ``follow[t]`` (the end, 0, for tokens it has no rule for)."""

    def __init__(self, follow: dict[int, int], vocab: int = 32):
        self.follow, self.vocab = follow, vocab
        self.fed: list[list[int]] = []

    def __call__(self, input_ids, cache, use_cache, logits_to_keep):
        import torch

        ids = input_ids[0].tolist()
        self.fed.append(ids)
        cache.length += len(ids)
        logits = torch.zeros(len(ids), self.vocab)
        for row, token in enumerate(ids):
            logits[row, self.follow.get(token, 0)] = 1.0
        return type("Out", (), {"logits": logits[-logits_to_keep:].unsqueeze(0)})()


def test_prompt_lookup_copies_a_quoted_sentence_in_few_passes_with_the_same_tokens():
    import torch

    from macro.agent.local_llm import decode

    sentence = list(range(5, 25))  # the tool's sentence in the prompt, which the answer then repeats
    follow = {t: t + 1 for t in sentence[:-1]} | {3: 5}
    prompt = torch.tensor([[1, 2, *sentence, 4, 3]])
    plain = _Copier(follow)
    tokens, passes = decode(plain, prompt, _Cache(), eos=0, limit=40, lookup=False)
    assert tokens == sentence and passes == len(sentence) + 1
    copier = _Copier(follow)
    drafted, fewer = decode(copier, prompt, _Cache(), eos=0, limit=40)
    assert drafted == sentence
    assert fewer <= 5
    wrong = _Copier(follow | {9: 20})  # the model leaves the quoted text: the rest of the draft is dropped
    tokens, _ = decode(_Copier(follow | {9: 20}), prompt, _Cache(), eos=0, limit=40, lookup=False)
    assert decode(wrong, prompt, _Cache(), eos=0, limit=40)[0] == tokens == [5, 6, 7, 8, 9, 20, 21, 22, 23, 24]
