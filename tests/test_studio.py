"""LangGraph's own tooling can serve the agent: langgraph.json names a factory that builds the graph from a run's
config, and the graph answers a run whose input names the scan by path."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from pydicom.data import get_testdata_file

ROOT = Path(__file__).parents[1]


def test_langgraph_json_names_a_factory_whose_graph_answers(home):
    config = json.loads((ROOT / "langgraph.json").read_text())
    assert config["dependencies"] == ["."]
    path, _, name = config["graphs"]["macro"].partition(":")
    spec = importlib.util.spec_from_file_location("macro_studio_graph", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # as the LangGraph server loads it: by file path
    graph = getattr(module, name)({"configurable": {"policy": "scripted", "max_steps": 3}})
    state = graph.invoke(
        {
            "messages": [{"role": "user", "content": "Describe the scan"}],
            "case": {"source": get_testdata_file("CT_small.dcm")},
            "steps": None,
            "retries": None,
        }
    )
    assert [step["tool"] for step in state["steps"]] == ["describe_scan"] and state["steps"][0]["ok"]
    assert "CT" in state["answer"] or "ct" in state["answer"]
