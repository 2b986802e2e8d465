"""GRPO rewards as plain functions ``(completions, **fields) -> list[float | None]``, one per signal, so TRL logs
each separately (``rewards/<name>/mean``) and the recipe weighs them.

The fields come from :class:`~macro.training.rollout.Rollouts`: the checker's ``verdict``, the episode's ``steps``,
``format_errors``, ``stopped`` (a loop guard's note), the family's ``expected`` chain and the admitted
``composites`` its case offered. ``completions`` (the decoded text, tool turns included) is not read: the episode's
fields say what happened without parsing it again.
"""

from __future__ import annotations

from typing import Any, Callable

from macro.eval.bench.run import process_metrics


def outcome(completions: list, verdict: list[bool], **_: Any) -> list[float]:
    """1 when the family's checker accepts the answer, else 0: the task itself."""
    return [1.0 if v else 0.0 for v in verdict]


def well_formed(completions: list, format_errors: list[list[str]], **_: Any) -> list[float]:
    """1 for a turn whose every reply was a valid call or an answer, halved by each malformed one."""
    return [0.5 ** len(errors) for errors in format_errors]


def tool_choice(completions: list, steps: list[list[dict]], expected: list[list[dict]], **_: Any) -> list[float]:
    """The family's expected chain: mean of tool selection, chain fidelity and argument accuracy (MedCTA-style, the
    benchmark's own process metrics)."""
    out = []
    for done, want in zip(steps, expected):
        m = process_metrics(want, done)
        out.append((m["tool_selection"] + m["fidelity"] + (m["arg_accuracy"] or 0.0)) / 3)
    return out


def efficiency(
    completions: list, steps: list[list[dict]], expected: list[list[dict]], stopped: list[str], **_: Any
) -> list[float]:
    """1 less a quarter per call beyond the expected chain and half per failed call, half when a loop guard (a
    repeated call, the step limit) ended the turn; at least 0."""
    out = []
    for done, want, note in zip(steps, expected, stopped):
        failed = sum(not s["ok"] for s in done)
        extra = max(0, len(done) - len(want))
        out.append(max(0.0, 1.0 - 0.25 * extra - 0.5 * failed - (0.5 if note else 0.0)))
    return out


def composite_use(
    completions: list, steps: list[list[dict]], composites: list[list[str]], **_: Any
) -> list[float | None]:
    """Where the case offers admitted composites: 1 when one ran and succeeded, else 0; None (not scored) where none
    is offered, so tasks without a composite neither gain nor lose."""
    out: list[float | None] = []
    for done, offered in zip(steps, composites):
        if not offered:
            out.append(None)
        else:
            out.append(1.0 if any(s["ok"] and s["tool"] in offered for s in done) else 0.0)
    return out


REWARDS: dict[str, Callable[..., list]] = {
    f.__name__: f for f in (outcome, well_formed, tool_choice, efficiency, composite_use)
}


def total(weights: dict[str, float], fields: dict[str, Any]) -> float:
    """The weighted reward of one episode's ``fields`` (one value each), as TRL sums it (a None is left out)."""
    score = 0.0
    for name, weight in weights.items():
        value = REWARDS[name]([None], **{k: [v] for k, v in fields.items()})[0]
        score += weight * (value or 0.0)
    return score
