"""The agent graph with deterministic policies: tool loop, errors as messages, limits, grounding, threads."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from typer.testing import CliRunner

from macro.agent.graph import Agent
from macro.agent.loop import compose_answer
from macro.agent.scripted import ScriptedPolicy, plan_for
from macro.artifacts import ArtifactStore
from macro.cli import app
from macro.config import Home
from macro.tools.executor import Step
from macro.trajectory import TrajectoryStore


class Replay(BaseChatModel):
    """Replies with a fixed list of raw texts (as a local model would) or AIMessages, one per call."""

    replies: list[Any]
    seen: list[list] = []

    @property
    def _llm_type(self) -> str:
        return "replay"

    def bind_tools(self, tools, **kwargs):
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        from macro.agent.toolcall import parse_calls

        self.seen.append(list(messages))
        reply = self.replies[min(len(self.seen) - 1, len(self.replies) - 1)]
        if isinstance(reply, str):
            calls, errors = parse_calls(reply)
            reply = AIMessage(
                "" if calls else reply,
                tool_calls=calls,
                invalid_tool_calls=[
                    {"name": None, "args": reply, "id": None, "error": e, "type": "invalid_tool_call"} for e in errors
                ],
            )
        return ChatResult(generations=[ChatGeneration(message=reply)])


def _agent(policy, home, **kw) -> Agent:
    return Agent(policy, "test-policy", home=Home(home), **kw)


def test_cli_ask_scripted_json_volume_within_one_percent(demo_folder, home):
    truth = json.loads((demo_folder / "truth.json").read_text())["volumes_ml"]["WT"]
    result = CliRunner().invoke(
        app, ["ask", str(demo_folder), "What is the tumour volume?", "--policy", "scripted", "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out) >= {"answer", "thread_id", "trajectory"}
    steps = out["trajectory"]["steps"]
    assert [s["tool"] for s in steps] == ["measure_volume"]
    assert set(steps[0]) >= {"tool", "args", "ok", "ms", "error"}
    assert steps[0]["ok"]
    assert steps[0]["error"] is None
    assert abs(steps[0]["data"]["volume_ml"] - truth) / truth < 0.01
    assert f"{truth:.2f}" in out["answer"]
    assert "Findings (from tools)" in out["answer"]
    assert "-> measure_volume(region=WT)" in result.stderr  # streamed as it happened


def test_cli_ask_follows_up_in_a_thread_without_the_case_and_names_the_thread_first(demo_folder, home):
    runner = CliRunner()
    first = runner.invoke(app, ["ask", str(demo_folder), "What is the tumour volume?", "--policy", "scripted"])
    assert first.exit_code == 0, first.output
    thread = first.stderr.splitlines()[0].removeprefix("thread ")
    assert thread.startswith("thread-")
    again = runner.invoke(app, ["ask", "How big is the enhancing part?", "--thread", thread, "--policy", "scripted"])
    assert again.exit_code == 0, again.output
    assert again.stderr.splitlines()[0] == f"thread {thread}"
    assert "enhancing tumour (ET) volume" in again.stdout
    alone = runner.invoke(app, ["ask", "How big is it?", "--policy", "scripted"])
    assert alone.exit_code == 2
    assert "--thread ID QUESTION" in alone.output


@pytest.mark.parametrize("question", ["", "   "])
def test_an_empty_question_is_refused(demo_folder, home, question):
    result = CliRunner().invoke(app, ["ask", str(demo_folder), question, "--policy", "scripted"])
    assert result.exit_code == 2
    assert "the question is empty" in result.output


def test_a_very_long_question_is_cut_with_a_note(demo, home):
    agent = _agent(ScriptedPolicy(), home)
    question = "What is the tumour volume?" + " Please be thorough." * 200
    result = agent.ask(demo, question)
    assert result.trajectory.question.startswith("What is the tumour volume?")
    assert len(result.trajectory.question) == 2000
    assert result.answer.endswith(f"Your question was cut to its first 2000 of {len(question)} characters.)")


def test_failing_tool_goes_back_to_the_policy_and_into_the_trajectory(demo, home):
    policy = Replay(
        replies=[
            '<tool_call>{"name": "render_slice", "arguments": {"axis": "axial", "index": 9999}}</tool_call>',
            '<tool_call>{"name": "render_slice", "arguments": {"axis": "axial"}}</tool_call>',
            "Here is the axial slice.",
        ],
        seen=[],
    )
    result = _agent(policy, home).ask(demo, "Show me an axial slice")
    steps = result.trajectory.steps
    assert [s["ok"] for s in steps] == [False, True]
    assert "outside" in steps[0]["error"]
    tool_msgs = [m for m in policy.seen[1] if m.type == "tool"]
    assert tool_msgs
    assert tool_msgs[0].status == "error"
    assert "outside" in tool_msgs[0].text
    assert result.answer.startswith(steps[1]["headline"])  # the tool's sentence, not the paraphrase
    assert steps[1]["outputs"]


def test_unknown_tool_and_bad_arguments_are_tool_errors(demo, home):
    policy = Replay(
        replies=[
            '<tool_call>{"name": "segment_everything", "arguments": {}}</tool_call>',
            '<tool_call>{"name": "measure_volume", "arguments": {"region": "liver"}}</tool_call>',
            '<tool_call>{"name": "measure_volume", "arguments": {"region": "ET", "case_id": "abc"}}</tool_call>',
            "Done.",
        ],
        seen=[],
    )
    steps = _agent(policy, home).ask(demo, "volume?").trajectory.steps
    assert not steps[0]["ok"]
    assert "unknown tool" in steps[0]["error"]
    assert "measure_volume" in steps[0]["error"]
    assert not steps[1]["ok"]
    assert "region" in steps[1]["error"]
    assert steps[2]["ok"]
    assert steps[2]["args"] == {"region": "ET"}


def test_malformed_output_gets_a_retry_message(demo, home):
    policy = Replay(
        replies=[
            '<tool_call>{"name": "describe_scan", "arguments": </tool_call>',
            '<tool_call>{"name": "describe_scan", "arguments": {}}</tool_call>',
            "It is a brain MRI.",
        ],
        seen=[],
    )
    result = _agent(policy, home).ask(demo, "what is this?")
    assert len(result.trajectory.format_errors) == 1
    assert [s["tool"] for s in result.trajectory.steps] == ["describe_scan"]
    assert any(isinstance(m, HumanMessage) and "not a valid tool call" in m.text for m in policy.seen[1])


def test_arguments_a_checkpoint_cannot_hold_get_a_retry_not_a_lost_turn(demo, home):
    policy = Replay(
        replies=[
            '<tool_call>{"name": "render_slice", "arguments": {"index": 123456789012345678901234567890}}</tool_call>',
            '<tool_call>{"name": "render_slice", "arguments": {"index": 40}}</tool_call>',
            "Here is slice 40.",
        ],
        seen=[],
    )
    result = _agent(policy, home).ask(demo, "show slice 123456789012345678901234567890")
    assert result.trajectory.format_errors == ["arguments.index is an integer beyond 64 bits"]
    assert [s["args"]["index"] for s in result.trajectory.steps] == [40]
    assert TrajectoryStore(Home(home).trajectories_db).get(result.trajectory.id) is not None


def test_step_limit_stops_a_looping_policy(demo, home):
    policy = Replay(
        replies=[
            f'<tool_call>{{"name": "render_slice", "arguments": {{"index": {i}}}}}</tool_call>' for i in range(10, 20)
        ],
        seen=[],
    )
    result = _agent(policy, home, max_steps=3).ask(demo, "loop")
    assert len(result.trajectory.steps) == 3
    assert "step limit" in result.answer


def test_invented_numbers_and_paraphrases_are_withheld():
    step = Step(
        tool="measure_volume",
        args={"region": "WT"},
        ok=True,
        ms=1.0,
        summary="whole tumour (WT) volume: 37.67 mL (4709 voxels).",
        headline="whole tumour (WT) volume: 37.67 mL (4709 voxels).",
    )
    quoted = "Result: whole tumour (WT) volume: 37.67 mL (4709 voxels)."
    assert compose_answer(quoted, [step]).startswith(quoted)
    paraphrase = compose_answer("The tumour is 37.67 mL.", [step])
    assert paraphrase.startswith(step.headline) and "The tumour is" not in paraphrase
    answer = compose_answer("The tumour is 52 mL and grade 4.", [step])
    assert "withheld" in answer
    assert "52" in answer
    assert "37.67 mL" in answer


def test_threads_resume_after_restart_and_trajectories_are_stored(demo, home):
    first = _agent(ScriptedPolicy(), home).ask(demo, "What is the enhancing tumour volume?")
    restarted = _agent(ScriptedPolicy(), home)
    assert restarted.thread_case(first.thread_id)["id"] == demo.id
    second = restarted.ask(None, "Now describe the scan.", thread_id=first.thread_id)
    assert [s["tool"] for s in second.trajectory.steps] == ["describe_scan"]
    snapshot = restarted._graph(ArtifactStore(restarted.home.artifacts)).get_state(
        {"configurable": {"thread_id": first.thread_id}}
    )
    assert sum(isinstance(m, HumanMessage) for m in snapshot.values["messages"]) == 2
    stored = TrajectoryStore(Home(home).trajectories_db).list(thread_id=first.thread_id)
    assert [t.question for t in stored] == ["What is the enhancing tumour volume?", "Now describe the scan."]
    assert stored[0].tool_versions == {"measure_volume": "1.2.1"}
    assert stored[0].case_id == demo.id


def test_scripted_rules_route_by_meaning():
    tools = {"describe_scan", "render_slice", "measure_volume", "crop_resample"}
    assert plan_for("How large is the enhancing tumour?", tools) == [
        {"name": "measure_volume", "args": {"region": "ET"}}
    ]
    assert plan_for("show coronal flair slice 40", tools) == [
        {"name": "render_slice", "args": {"axis": "coronal", "sequence": "flair", "index": 40}}
    ]
    assert plan_for("volume?", {"describe_scan"}) == [{"name": "describe_scan", "args": {}}]


def test_cli_chat_reads_piped_stdin_and_resumes(demo_folder, home):
    runner = CliRunner()
    first = runner.invoke(
        app, ["chat", str(demo_folder), "--policy", "scripted"], input="What is the tumour core volume?\n/quit\n"
    )
    assert first.exit_code == 0, first.output
    thread = first.stderr.strip().split("--thread ")[-1]
    again = runner.invoke(app, ["chat", "--thread", thread, "--policy", "scripted"], input="Describe the scan\n")
    assert again.exit_code == 0
    assert "mri-multiseq" in again.stdout
    missing = runner.invoke(app, ["chat", "--thread", "thread-nope", "--policy", "scripted"], input="hi\n")
    assert missing.exit_code == 2


@pytest.mark.parametrize("command", [["tools", "list", "--json"], ["doctor", "--json"]])
def test_info_commands_print_json(command, home):
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    json.loads(result.stdout)


def test_scripted_segments_first_when_there_is_no_reference_mask():
    """The segmentation before a volume comes from the specs (measure_volume reads a mask, segmentation makes one),
    not from a rule naming the tools; with a reference mask the case supplies it."""
    from macro.agent.scripted import with_prerequisites
    from macro.tools.registry import Registry

    registry = Registry.default()
    tools = {"describe_scan", "render_slice", "measure_volume", "crop_resample", "segment_brain_tumor"}
    bound = ScriptedPolicy().bind_tools([registry.get(n) for n in sorted(tools)]).kwargs["tools"]
    plan = plan_for("How large is the enhancing tumour?", tools)
    assert with_prerequisites(plan, bound, {"image"}) == [
        {"name": "segment_brain_tumor", "args": {}},
        {"name": "measure_volume", "args": {"region": "ET"}},
    ]
    assert with_prerequisites(plan, bound, {"image", "mask"}) == plan
    assert plan_for("Segment it without adaptation", tools) == [
        {"name": "segment_brain_tumor", "args": {"adapt": "none"}}
    ]


def test_a_repeated_call_ends_the_turn_instead_of_looping(demo, home):
    policy = Replay(
        replies=[
            '<tool_call>{"name": "describe_scan", "arguments": {}}</tool_call>',
            '<tool_call>{"name": "render_slice", "arguments": {}}</tool_call>',
            '<tool_call>{"name": "describe_scan", "arguments": {}}</tool_call>',
        ],
        seen=[],
    )
    agent = _agent(policy, home)
    result = agent.ask(demo, "what is this?")
    assert [s["tool"] for s in result.trajectory.steps] == ["describe_scan", "render_slice"]
    lead, *rest = result.answer.splitlines()
    assert lead.startswith("Here is the axial slice")  # the last result first, never the loop guard's note
    assert rest[0].startswith("Caveat: the policy asked to repeat a call it had already made")
    assert "mri-multiseq" in result.answer
    messages = (
        agent._graph(ArtifactStore(agent.home.artifacts))
        .get_state({"configurable": {"thread_id": result.thread_id}})
        .values["messages"]
    )
    answered = {m.tool_call_id for m in messages if m.type == "tool"}
    assert all(c["id"] in answered for m in messages if m.type == "ai" for c in m.tool_calls)
    assert messages[-1].type == "ai"
    assert messages[-1].text == lead  # the policy's history holds what it should imitate, not the findings block


class Recording(Replay):
    """A policy that says it decodes under a grammar, and records the options each decision gets."""

    constrained: bool = True
    options: list[dict] = []

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.options.append(kwargs)
        return super()._generate(messages, stop, run_manager)


def test_a_constrained_policy_may_only_call_tools_whose_inputs_exist(tmp_path, demo):
    from macro.agent.loop import decide
    from macro.data import example_case
    from macro.tools.registry import Registry

    registry = Registry.default()
    bare = example_case("lowfield-sequences", tmp_path)  # no mask: a volume needs a segmentation first
    policy = Recording(replies=["The answer."], options=[])
    decide(policy, registry, bare, [HumanMessage("How big is the tumour?")])
    decide(policy, registry, bare, [HumanMessage("And now?")], frozenset({"mask"}))
    decide(policy, registry, demo, [HumanMessage("How big is the tumour?")])
    before, after, reference = (o["waiting"] for o in policy.options)
    assert before == {"measure_volume": ["segment_brain_tumor"]}
    assert after == {} and reference == {}
    plain = Recording(replies=["The answer."], constrained=False, options=[])
    decide(plain, registry, bare, [HumanMessage("How big is the tumour?")])
    assert plain.options == [{}]  # a server-side backend is not sent an option it does not know


@pytest.mark.parametrize(
    "plan, problem",
    [
        ('{"calls": 5}', "not a list"),
        ('[{"name": 3}]', "no string name"),
        ("not json", "not JSON"),
        ('[{"name": "describe_scan", "args": [1, 2]}]', "not an object"),
        ('[{"name": "render_slice", "args": {"index": 123456789012345678901234567890}}]', "beyond 64 bits"),
    ],
)
def test_a_scripted_plan_that_cannot_run_is_one_line_naming_the_file(demo_folder, home, tmp_path, plan, problem):
    path = tmp_path / "plan.json"
    path.write_text(plan)
    result = CliRunner().invoke(app, ["ask", str(demo_folder), "describe", "--policy", f"scripted:{path}"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert str(path) in line and problem in line


def test_an_unreachable_policy_server_is_one_line_not_a_traceback(demo_folder, home):
    result = CliRunner().invoke(app, ["ask", str(demo_folder), "describe", "--policy", "openai:http://127.0.0.1:9/v1"])
    assert result.exit_code == 3 and "Traceback" not in result.output
    assert "error: the policy backend failed" in result.stderr and "Connection" in result.stderr


def test_concurrent_turns_on_one_thread_all_reach_its_history(demo, home):
    """Six turns on one thread at once, each from its own agent (as from six processes): none is lost."""
    from concurrent.futures import ThreadPoolExecutor

    first = Agent(ScriptedPolicy(), "scripted", home=Home(home)).ask(demo, "Describe this scan.")
    questions = [f"Describe this scan, take {i}." for i in range(6)]

    def turn(question):
        return Agent(ScriptedPolicy(), "scripted", home=Home(home)).ask(None, question, thread_id=first.thread_id)

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(turn, questions))
    state = (
        _agent(ScriptedPolicy(), home)
        ._graph(ArtifactStore(Home(home).artifacts))
        .get_state({"configurable": {"thread_id": first.thread_id}})
    )
    asked = [m.text for m in state.values["messages"] if isinstance(m, HumanMessage)]
    assert sorted(asked[1:]) == sorted(questions) and len(asked) == 7


def test_a_turn_decodes_the_scan_once(demo_folder, home, monkeypatch):
    from macro import case as case_module
    from macro.case import load_case

    decoded = []
    real = case_module._read_pixels
    monkeypatch.setattr(case_module, "_read_pixels", lambda c: decoded.append(c.id) or real(c))
    monkeypatch.setattr(case_module, "_CACHE", OrderedDict())
    scan = load_case(demo_folder)  # as the CLI loads it: decoded once to check the voxels
    _agent(ScriptedPolicy(), home).ask(scan, "Describe this scan and show me a slice.")
    assert decoded == [scan.id]


def test_eval_policy_reports_each_figure_with_its_interval(home, tmp_path):
    """``macro eval policy`` on a few requests (scripted policy: no model): every first-call share and the clean
    episode share carry a 95 % interval over the requests, and the text report prints them."""
    rows = [
        {"request": "header info pls", "case": "wheel:pydicom/data/test_files/CT_small.dcm", "tool": "describe_scan"},
        {"request": "what is this scan", "case": "wheel:nibabel/tests/data/anatomical.nii", "tool": "describe_scan"},
    ]
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps(r) + "\n" for r in rows))
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "policy", "--policy", "scripted", "--requests", str(requests), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["server"]
    first = report["first_call"]
    assert first["n"] == 2 and set(first["ci"]) == {"parseable", "valid", "right_tool", "exact_args"}
    for key, (lo, hi) in first["ci"].items():
        assert lo <= first[key] <= hi and hi - lo > 10, "two requests leave a wide interval, even at 0 or 100 %"
    assert report["episodes"]["clean_ci"][0] <= report["episodes"]["clean"] <= report["episodes"]["clean_ci"][1]
    text = runner.invoke(app, ["eval", "policy", "--policy", "scripted", "--requests", str(requests)])
    assert text.exit_code == 0 and "95 % intervals over the requests (Wilson): parseable [" in text.stdout
