"""MACRO-Bench figures: per agent and split, success with a seed-stratified 95 % bootstrap CI and MedCTA-style
process metrics; per family success; and the component analysis (what every other agent, memory and composites
included, changes against zero-shot ReAct on the same tasks: paired bootstrap CI, McNemar p, and the smallest
difference the run's size can detect), stated plainly. The statistics are :mod:`macro.stats`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from macro.stats import bootstrap_ci, min_detectable_difference, paired, pairs_needed

CLAIM_POINTS = 10.0
PLANNING_DISCORDANCE = 0.2  # share of tasks two agents disagree on, assumed for the detectable difference when a run
# shows fewer (identical agents disagree on none, which says nothing about the benchmark's size)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), 4) if values else None


def _cell(rows: list[dict]) -> dict:
    by_seed = defaultdict(list)
    for r in rows:
        by_seed[r["seed"]].append(float(r["success"]))
    solved = [r for r in rows if r["success"]]
    ci = bootstrap_ci([float(r["success"]) for r in rows], strata=[r["seed"] for r in rows])
    return {
        "success": round(100 * float(np.mean([r["success"] for r in rows])), 2),
        "ci": [round(100 * v, 2) for v in ci],
        "per_seed": {str(s): round(100 * float(np.mean(v)), 2) for s, v in sorted(by_seed.items())},
        "tool_selection": round(100 * _mean(r["tool_selection"] for r in rows), 2),
        "arg_validity": _points(_mean(r.get("arg_validity") for r in rows)),
        "arg_accuracy": _points(_mean(r.get("arg_accuracy") for r in rows)),
        "fidelity": round(100 * _mean(r["fidelity"] for r in rows), 2),
        "calls_per_solved": round(sum(r["calls"] for r in solved) / len(solved), 2) if solved else None,
        "failed_calls": round(float(np.mean([r["failed_calls"] for r in rows])), 3),
        "latency_s": round(float(np.mean([r["latency_s"] for r in rows])), 2),
        "episodes": len(rows),
        "errors": sum(1 for r in rows if r.get("error")),
    }


def _points(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def _paired_delta(rows: list[dict], a: str, b: str, split: str) -> dict | None:
    """Success of agent ``a`` minus agent ``b`` on the same tasks, in points: paired bootstrap CI, exact McNemar p, and
    the smallest difference this many pairs detect (80 % power, two-sided 5 %) at the discordance seen, or at
    :data:`PLANNING_DISCORDANCE` when fewer tasks differ."""
    wins = {r["task"]: float(r["success"]) for r in rows if r["agent"] == a and r["split"] == split}
    base = {r["task"]: float(r["success"]) for r in rows if r["agent"] == b and r["split"] == split}
    common = sorted(set(wins) & set(base))
    if not common:
        return None
    d = paired([wins[t] for t in common], [base[t] for t in common])
    mdd = min_detectable_difference(len(common), max(d["discordant"], PLANNING_DISCORDANCE))
    return {
        "delta": round(100 * d["delta"], 2),
        "ci": [round(100 * v, 2) for v in d["ci"]],
        "p_mcnemar": round(d["p_mcnemar"], 4),
        "discordant": round(100 * d["discordant"], 2),
        "min_detectable": round(100 * mdd, 2) if np.isfinite(mdd) else None,
        "tasks": len(common),
    }


def summarise(
    rows: list[dict], train_rows: list[dict], cfg: dict, evolution: dict, skipped: dict, seconds: float
) -> dict:
    agents = list(dict.fromkeys(r["agent"] for r in rows))
    report: dict = {
        "agents": {},
        "families": {},
        "config": cfg,
        "skipped": skipped,
        "seconds": round(seconds, 1),
        "experience": {
            "train_runs": len(train_rows),
            "verified": sum(r["success"] for r in train_rows),
            "library": evolution.get("library", []),
            "admitted": evolution.get("admitted", []),
            "candidates": evolution.get("candidates", []),
        },
    }
    for agent in agents:
        report["agents"][agent] = {
            split: _cell([r for r in rows if r["agent"] == agent and r["split"] == split])
            for split in ("held_out", "ood")
            if any(r["agent"] == agent and r["split"] == split for r in rows)
        }
        fam = defaultdict(lambda: defaultdict(list))
        for r in rows:
            if r["agent"] == agent:
                fam[r["family"]][r["split"]].append(float(r["success"]))
        report["families"][agent] = {
            f: {s: round(100 * float(np.mean(v)), 2) for s, v in splits.items()} for f, splits in fam.items()
        }
    full = "macro" if "macro" in agents else "react+memory+composites"
    analysis = {"full_agent": full, "components": {}}
    for split in ("held_out", "ood"):
        analysis["components"][split] = {
            name: _paired_delta(rows, name, "react", split) for name in agents if name != "react"
        }
    held = report["agents"].get(full, {}).get("held_out")
    base = report["agents"].get("react", {}).get("held_out")
    if base:
        needed = math.ceil(pairs_needed(CLAIM_POINTS / 100, PLANNING_DISCORDANCE))
        per_task = base["episodes"] / cfg["n_eval"]  # tasks a split gains per unit of n_eval (families x seeds)
        analysis["size"] = {
            "tasks_per_split": base["episodes"],
            "needed_for_claim": needed,
            "n_eval_for_claim": math.ceil(needed / per_task),
            "planning_discordance": PLANNING_DISCORDANCE,
        }
    if held and base:
        gain = round(held["success"] - base["success"], 2)
        fewer = (held["calls_per_solved"] or float("inf")) < (base["calls_per_solved"] or float("inf"))
        analysis["claim"] = {
            "gain_points": gain,
            "required": CLAIM_POINTS,
            "fewer_calls_per_solved": fewer,
            "holds": gain >= CLAIM_POINTS and fewer,
        }
    report["analysis"] = analysis
    return report


def markdown(report: dict) -> str:
    lines = ["# MACRO-Bench report", ""]
    cfg = report["config"]
    lines.append(
        f"Suite `{cfg['suite']}`, LLM `{cfg['llm']}`, seeds {list(cfg['seeds'])}, {cfg['n_eval']} task(s) per family, "
        "split and seed; "
        f"{report['seconds']:.0f} s. Success in points with a seed-stratified 95 % bootstrap CI."
    )
    lines += [
        "",
        "| agent | split | success | 95 % CI | tool selection | arg validity | fidelity | calls/solved | failed calls "
        "| s/task |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for agent, splits in report["agents"].items():
        for split, c in splits.items():
            lines.append(
                f"| {agent} | {split} | {c['success']:.1f} | [{c['ci'][0]:.1f}, {c['ci'][1]:.1f}] | "
                f"{c['tool_selection']:.1f} | "
                f"{_fmt(c['arg_validity'])} | {c['fidelity']:.1f} | {_fmt(c['calls_per_solved'], 2)} | "
                f"{c['failed_calls']:.2f} | {c['latency_s']:.1f} |"
            )
    families = sorted({f for fams in report["families"].values() for f in fams})
    lines += [
        "",
        "Success per family (held-out / OOD):",
        "",
        "| agent | " + " | ".join(families) + " |",
        "|---|" + "---|" * len(families),
    ]
    for agent, fams in report["families"].items():
        cells = [f"{_fmt(fams.get(f, {}).get('held_out'))} / {_fmt(fams.get(f, {}).get('ood'))}" for f in families]
        lines.append(f"| {agent} | " + " | ".join(cells) + " |")
    exp = report["experience"]
    lines += [
        "",
        f"Experience: {exp['verified']}/{exp['train_runs']} train runs verified; mined candidates: "
        f"{', '.join(exp['candidates']) or 'none'}; "
        f"library: {', '.join(exp['library']) or 'empty'}.",
    ]
    analysis = report["analysis"]
    lines += ["", "## What each component changes against zero-shot ReAct (paired by task)", ""]
    for split, comps in analysis["components"].items():
        for name, d in comps.items():
            if d:
                lines.append(
                    f"* {split}, {name}: {d['delta']:+.1f} points [{d['ci'][0]:+.1f}, {d['ci'][1]:+.1f}] over "
                    f"{d['tasks']} tasks (McNemar p = {d['p_mcnemar']:.3f}; {d['discordant']:.0f} % of tasks differ; "
                    f"smallest difference detectable at this size: {_fmt(d['min_detectable'])} points)"
                )
    size = analysis.get("size")
    if size:
        lines += [
            "",
            f"Size: {size['tasks_per_split']} paired tasks per split. Detecting a {CLAIM_POINTS:.0f}-point paired "
            f"difference (80 % power, two-sided 5 %, {100 * size['planning_discordance']:.0f} % of tasks differing) "
            f"takes {size['needed_for_claim']} (`--n-eval {size['n_eval_for_claim']}`)"
            + (": this run can detect it." if size["tasks_per_split"] >= size["needed_for_claim"] else "."),
        ]
    claim = analysis.get("claim")
    if claim:
        verdict = "holds" if claim["holds"] else "does NOT hold"
        lines += [
            "",
            f"Claim (full agent `{analysis['full_agent']}` ≥ {claim['required']:.0f} points over zero-shot ReAct on "
            "held-out, with fewer "
            f"calls per solved task): {verdict} here ({claim['gain_points']:+.1f} points; fewer calls per solved "
            f"task: {claim['fewer_calls_per_solved']}).",
        ]
    for kind, items in report["skipped"].items():
        for name, why in items.items():
            lines.append(f"* skipped {kind[:-1]} `{name}`: {why}")
    return "\n".join(lines) + "\n"


def _fmt(value, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def write_report(report: dict, out: Path) -> list[Path]:
    from macro.reports import write_report as write

    return write(out, "bench", report, markdown(report), lambda figure: _plot(figure, report))


def _plot(fig, report: dict) -> None:
    """Success per agent on the held-out and OOD splits, with bootstrap CIs."""
    agents = list(report["agents"])
    fig.set_size_inches(max(6, 1.4 * len(agents)), 3.6)
    ax = fig.subplots()
    width = 0.38
    for i, split in enumerate(("held_out", "ood")):
        cells = [report["agents"][a].get(split) for a in agents]
        values = [c["success"] if c else 0 for c in cells]
        err = np.array([[c["success"] - c["ci"][0], c["ci"][1] - c["success"]] if c else [0, 0] for c in cells]).T
        ax.bar(np.arange(len(agents)) + i * width, values, width, yerr=err, capsize=3, label=split)
    ax.set_xticks(np.arange(len(agents)) + width / 2, agents, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("success (points)")
    ax.set_ylim(0, 100)
    ax.legend()
