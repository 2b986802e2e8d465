"""Synthetic trajectories with planted chains, for the miner's recovery test and its speed benchmark.

Three chains are planted with data flow the miner must recover: an artifact passed from one step to the next,
an argument copied from an earlier step's result, constant literals (defaults) and varying ones (parameters).
They are hidden among random calls, failed runs, and a frequent but unreliable chain that mostly fails.
"""

from __future__ import annotations

import random

NOISE_TOOLS = (
    "describe_scan",
    "render_slice",
    "crop_resample",
    "measure_volume",
    "classify_lesion",
    "classify_findings",
    "segment_brain_tumor",
    "score_anomaly",
    "answer_stepwise",
    "compare_volumes",
)
# name → (tools, expected inputs per step, expected args per step: ("param", default|None) or ("from", step, field))
PLANTED = {
    "segment_then_measure": (
        ("segment_brain_tumor", "measure_volume"),
        [{}, {"mask": 0}],
        [{"adapt": ("param", "vista")}, {"region": ("param", None)}],
    ),
    "describe_then_render_then_score": (
        ("describe_scan", "render_slice", "score_anomaly"),
        [{}, {}, {"image": 1}],
        [{}, {"sequence": ("from", 0, "brightest"), "axis": ("param", None)}, {}],
    ),
    "screen_then_explain": (
        ("score_anomaly", "answer_stepwise"),
        [{}, {"heatmap": 0}],
        [{}, {"use_teacher": ("param", False)}],
    ),
}
UNRELIABLE = ("crop_resample", "classify_findings")


class _Ids:
    def __init__(self):
        self.n = 0

    def __call__(self, kind: str) -> str:
        self.n += 1
        return f"{kind}-{self.n}"


def _planted_steps(name: str, rng: random.Random, ids: _Ids) -> list[dict]:
    if name == "segment_then_measure":
        mask = ids("mask")
        return [
            _step("segment_brain_tumor", {"adapt": "vista" if rng.random() < 0.95 else "tent"}, outputs=[mask]),
            _step(
                "measure_volume",
                {"region": rng.choice(["ET", "TC", "WT"])},
                inputs={"mask": mask},
                data={"volume_ml": rng.uniform(1, 90)},
            ),
        ]
    if name == "describe_then_render_then_score":
        bright = rng.choice(["t1", "t1ce", "t2", "flair"])
        png = ids("png")
        return [
            _step("describe_scan", {}, data={"brightest": bright, "shape": [80, 96, 80]}),
            _step(
                "render_slice",
                {"sequence": bright, "axis": rng.choice(["axial", "coronal", "sagittal"])},
                outputs=[png],
            ),
            _step("score_anomaly", {}, inputs={"image": png}, data={"score": rng.random()}, outputs=[ids("heatmap")]),
        ]
    heat = ids("heatmap")
    return [
        _step("score_anomaly", {}, outputs=[heat], data={"score": rng.random()}),
        _step(
            "answer_stepwise",
            {"use_teacher": rng.random() < 0.1},
            inputs={"heatmap": heat},
            data={"diagnosis": "normal"},
        ),
    ]


def _step(
    tool: str,
    args: dict,
    inputs: dict | None = None,
    outputs: list | None = None,
    data: dict | None = None,
    ok: bool = True,
) -> dict:
    return {
        "tool": tool,
        "args": args,
        "ok": ok,
        "inputs": {"case": "c", **(inputs or {})},
        "outputs": outputs or [],
        "data": data or {},
    }


def _noise(rng: random.Random, ids: _Ids, n: int) -> list[dict]:
    steps = []
    for _ in range(n):
        tool = rng.choice(NOISE_TOOLS)
        steps.append(
            _step(
                tool,
                {"axis": rng.choice(["axial", "coronal"])} if tool == "render_slice" else {},
                outputs=[ids("art")] if rng.random() < 0.5 else [],
                ok=rng.random() > 0.1,
            )
        )
    return steps


def synthetic_trajectories(n: int, seed: int = 0) -> list[dict]:
    """``n`` trajectory bodies (the stored JSON shape): about 60 % carry one or two planted chains (10 % of them
    fail verification), 10 % the unreliable chain (60 % fail), the rest only noise (35 % fail); 10 % of the
    others stay unverified."""
    rng = random.Random(seed)
    ids = _Ids()
    names = list(PLANTED)
    out = []
    for k in range(n):
        steps = _noise(rng, ids, rng.randint(0, 3))
        roll = rng.random()
        verification = (
            "failed"
            if rng.random() < (0.1 if roll < 0.6 else 0.35)
            else ("unverified" if rng.random() < 0.1 else "verified")
        )
        if roll < 0.6:
            for name in rng.sample(names, rng.choice([1, 1, 2])):
                steps += _planted_steps(name, rng, ids) + _noise(rng, ids, rng.randint(0, 2))
        elif roll < 0.7:
            steps += [_step(UNRELIABLE[0], {"crop": True}, outputs=[ids("img")]), _step(UNRELIABLE[1], {})]
            verification = "failed" if rng.random() < 0.6 else "verified"
        out.append(
            {
                "id": f"traj-{k:07d}",
                "steps": steps,
                "verification": verification,
                "case_id": f"case-{k}",
                "question": "synthetic",
            }
        )
    return out
