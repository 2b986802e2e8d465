"""Constrained decisions: the grammar admits exactly one valid call of an offered tool, or a plain answer."""

from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydicom.data import get_testdata_file

from macro.agent.grammar import Constraint
from macro.agent.local_llm import LocalChatModel
from macro.agent.prompts import system_message, to_chat
from macro.agent.toolcall import format_call, parse_calls
from macro.case import load_case
from macro.tools.base import admits
from macro.tools.registry import Registry


@pytest.fixture(scope="module")
def constraint():
    from transformers import AutoTokenizer

    from macro.agent.local_llm import gguf_path

    path = gguf_path()
    return Constraint(AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name))


def accepts(constraint: Constraint, tools: list[dict], text: str) -> bool:
    from llguidance import LLMatcher

    hf_ids = constraint.tokenizer.tokenize_str(text)
    matcher = LLMatcher(constraint.tokenizer, constraint.grammar(tools), log_level=0)
    return matcher.validate_tokens(hf_ids) == len(hf_ids) and matcher.consume_tokens(hf_ids) and matcher.is_accepting()


def test_every_spec_example_is_admitted_and_mistakes_are_not(constraint):
    registry = Registry.default()
    tools = [convert_to_openai_tool(t) for t in registry.atomic().values()]
    for tool in registry.atomic().values():
        for example in tool.spec.examples:
            assert accepts(constraint, tools, format_call(tool.name, example.args)), (tool.name, example.args)
    assert accepts(constraint, tools, "The whole tumour measures 12.3 mL.")
    for wrong in (
        '<tool_call>{"name": "crop_resample", "arguments": {"crop": True}}</tool_call>',  # Python's True
        '<tool_call>{"name": "render_slice", "arguments": {"crop": true}}</tool_call>',  # not its argument
        '<tool_call>{"name": "measure_volume", "arguments": {"region": "XX"}}</tool_call>',  # not in the enum
        '<tool_call>{"name": "delete_everything", "arguments": {}}</tool_call>',  # no such tool
        '{"name": "describe_scan", "arguments": {}}',  # a bare object is not an answer
        format_call("describe_scan", {}) + format_call("render_slice", {}),  # one call per decision
    ):
        assert not accepts(constraint, tools, wrong), wrong


def test_only_the_tools_offered_for_the_case_are_admitted(constraint):
    case = load_case(get_testdata_file("CT_small.dcm"))
    offered = [convert_to_openai_tool(t) for t in Registry.default().for_case(case)]
    assert accepts(constraint, offered, format_call("describe_scan", {}))
    assert not accepts(constraint, offered, format_call("measure_volume", {"region": "WT"}))


@pytest.mark.slow
def test_a_random_model_under_the_grammar_only_writes_valid_calls_or_answers(tiny_model):
    """An untrained 2-layer model writes noise; constrained, every decision still parses and fits its schema."""
    case = load_case(get_testdata_file("CT_small.dcm"))
    registry = Registry.default()
    tools = registry.for_case(case)
    model = LocalChatModel(model_path=str(tiny_model), max_new_tokens=200)
    for question in ("Describe this scan.", "Is anything anomalous?", "Show me the image.", "hello"):
        ai = model.bind_tools(tools).invoke([system_message(case.summary()), HumanMessage(question)])
        raw = ai.response_metadata["raw"]
        assert ai.response_metadata["constrained"]
        if raw.startswith("<tool_call>") and raw.endswith("</tool_call>"):
            (call,), errors = parse_calls(raw)
            assert not errors
            registry.get(call["name"]).args_schema(**call["args"])
        else:
            assert not ai.invalid_tool_calls and not raw.startswith(("<", "{")), raw


@pytest.mark.slow
def test_only_the_tools_that_can_run_now_may_be_called(tiny_model):
    """``waiting`` narrows the grammar and says on the tool's line which call comes first: with every tool waiting
    the reply is an answer, with one left any call is of that tool."""
    case = load_case(get_testdata_file("CT_small.dcm"))
    tools = Registry.default().for_case(case)
    model = LocalChatModel(model_path=str(tiny_model), max_new_tokens=40)
    names = [t.name for t in tools]
    for left in ([], ["describe_scan"]):
        waiting = {name: ["describe_scan"] for name in names if name not in left}
        for question in ("Is anything anomalous?", "Show me the image.", "Describe it."):
            messages = [system_message(case.summary()), HumanMessage(question)]
            ai = model.bind_tools(tools).invoke(messages, waiting=waiting)
            assert {c["name"] for c in ai.tool_calls} <= set(left), ai.response_metadata["raw"]
    chat = to_chat(
        [system_message(case.summary())], [convert_to_openai_tool(t) for t in tools], {"render_slice": ["x"]}
    )
    assert "- render_slice(): Show the scan as a picture: a PNG of one slice" in chat[0]["content"]
    assert "the tumour overlaid when a mask exists. First run: x." in chat[0]["content"]


def test_free_values_are_bounded_so_every_call_can_end(constraint):
    """An integer, a string or a number the schema leaves open cannot run on forever (an untrained model wrote
    ``"index": -1111…`` until the token budget ran out); what the schema states is kept."""
    tool = {
        "type": "function",
        "function": {
            "name": "probe",
            "parameters": {
                "type": "object",
                "properties": {
                    "n": {"type": "integer"},
                    "text": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                    "x": {"type": "number", "maximum": 10},
                },
            },
        },
    }
    assert accepts(constraint, [tool], format_call("probe", {"n": 52, "text": "the T2 signal", "x": 2.5}))
    for args in ({"n": 10**7}, {"text": "a" * 65}, {"x": 2.123456}, {"x": 11}):
        assert not accepts(constraint, [tool], format_call("probe", args)), args


def test_a_case_narrows_what_render_slice_offers(constraint, demo_folder):
    """A one-channel 2D image offers no orientation, slice or sequence; a multi-sequence volume offers exactly its
    own sequences and slices within its size."""
    registry = Registry.default()
    ct = load_case(get_testdata_file("CT_small.dcm"))
    flat = next(t for t in registry.for_case(ct) if t.name == "render_slice")
    assert convert_to_openai_tool(flat)["function"]["parameters"]["properties"] == {}
    demo = load_case(demo_folder)
    offered = [convert_to_openai_tool(t) for t in registry.for_case(demo)]
    assert accepts(constraint, offered, format_call("render_slice", {"index": 40, "sequence": "flair"}))
    assert not accepts(constraint, offered, format_call("render_slice", {"sequence": "dwi"}))
    assert not accepts(constraint, offered, format_call("render_slice", {"index": max(demo.shape)}))
    ct_offered = [convert_to_openai_tool(t) for t in registry.for_case(ct)]
    assert not accepts(constraint, ct_offered, format_call("render_slice", {"axis": "coronal"}))
    schema = convert_to_openai_tool(flat)["function"]["parameters"]
    assert admits(schema, {}) and not admits(schema, {"sequence": "t2"})
    # execution is unchanged: the offered copy runs with the tool's own argument model
    assert flat.args_schema is registry.get("render_slice").args_schema
