"""The agent's graph for LangGraph's own tooling: ``langgraph dev``, LangGraph Studio and the LangGraph server.

``langgraph.json`` at the project root names :func:`make_graph`, a factory the server calls with the run's config,
so a run can pick its policy (``configurable.policy``: embedded, scripted, hf:PATH, openai:URL) and step limit. The
server brings its own checkpointer and threads. A run's input names its scan by path::

    {"messages": [{"role": "user", "content": "What is the tumour volume?"}],
     "case": {"source": "/data/brats/case-001"}, "steps": null, "retries": null}

(``steps``/``retries`` null start a new turn, as :meth:`macro.agent.graph.Agent.stream` does). Runs served this way
are not recorded as trajectories, so they feed no mining, memory or GRPO; use ``macro chat``/``macro ui`` for that.
"""

from __future__ import annotations

import os
from functools import lru_cache

from langchain_core.runnables import RunnableConfig

from macro.agent.graph import build_graph
from macro.agent.loop import MAX_STEPS
from macro.agent.policy import make_policy
from macro.artifacts import ArtifactStore
from macro.config import Home
from macro.skills.library import load_composites
from macro.tools.registry import Registry


@lru_cache(maxsize=4)
def _policy(name: str):
    """One loaded model per policy name for the server's life (the embedded one takes ~30 s to load)."""
    return make_policy(name)[0]


def make_graph(config: RunnableConfig | None = None):
    """The compiled agent graph for one run's ``config`` (policy from ``configurable.policy``, else
    ``$MACRO_POLICY``, else the embedded one)."""
    configurable = (config or {}).get("configurable") or {}
    policy = configurable.get("policy") or os.environ.get("MACRO_POLICY", "embedded")
    home = Home.current().ensure()
    registry = load_composites(Registry.default(), home)
    max_steps = int(configurable.get("max_steps", MAX_STEPS))
    return build_graph(_policy(policy), registry, ArtifactStore(home.artifacts), max_steps)
