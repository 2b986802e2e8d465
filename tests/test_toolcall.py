"""The local tool-call format: formatted and parsed back, forgiving of small-model slips, strict on shape."""

from macro.agent.toolcall import format_call, parse_calls


def test_round_trip():
    calls, errors = parse_calls(format_call("measure_volume", {"region": "ET"}))
    assert errors == []
    assert calls[0]["name"] == "measure_volume"
    assert calls[0]["args"] == {"region": "ET"}


def test_tolerates_missing_close_tag_text_around_and_args_alias():
    text = 'Sure! <tool_call>{"name": "render_slice", "args": {"axis": "coronal"}}'
    calls, errors = parse_calls(text)
    assert errors == []
    assert calls[0]["args"] == {"axis": "coronal"}


def test_trailing_garbage_and_string_arguments():
    calls, _ = parse_calls('<tool_call>{"name": "describe_scan", "arguments": "{}"}}}</tool_call>')
    assert calls[0]["name"] == "describe_scan"
    assert calls[0]["args"] == {}


def test_plain_text_is_an_answer_not_an_error():
    assert parse_calls("The whole tumour volume is 37.67 mL.") == ([], [])


def test_malformed_calls_become_errors():
    for text in (
        '<tool_call>{"name": </tool_call>',
        '<tool_call>{"arguments": {}}</tool_call>',
        '<tool_call>{"name": "x", "arguments": [1]}</tool_call>',
    ):
        calls, errors = parse_calls(text)
        assert calls == []
        assert len(errors) == 1
