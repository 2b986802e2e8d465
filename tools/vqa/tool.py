"""``answer_stepwise``: a chest X-ray question answered through Step-CoT's seven diagnostic steps.

Each step gets the chosen option, its probability and a templated reasoning sentence; the chain comes back as
structured data and as text the policy can quote, ending with the diagnosis. The image-only student answers by
default (fast, no text encoder); the graph-attention teacher on request. Both are the shipped weights of
``macro train vqa`` (trained on the ``stepcot-phantom`` vocabulary), and the answer names the model's sha256.
A question is optional: when it names one step (e.g. "where is the lesion?") that step's answer is repeated
at the end, otherwise the diagnosis is. An image unlike the training radiographs (the out-of-distribution check on
the feature the models read, :mod:`macro.tools.ood`) gets a caveat and no chain; ``data["in_distribution"]`` says
which.
"""

from __future__ import annotations

import re
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, Field

from macro.data import stepcot
from macro.imagenet import case_pixels, resize
from macro.tools import ood
from macro.tools.base import MacroTool, ToolContext, ToolExample, ToolResult, ToolSpec
from macro.tools.vqa.checkpoint import FILES, SLOT, load_model, load_ood
from macro.tools.vqa.encoders import IMAGE_SIZE, ImageEncoder, pool_features
from macro.weights import MANIFEST, load_once

STEP_WORDS = (
    r"densit|opaci|lucen",
    r"distribut|spread|focal|diffuse",
    r"pattern",
    r"where|locat|zone|side",
    r"morpholog|margin|shape|border|contour",
    r"secondary|associated|effusion|cardiomegal|shift",
    r"diagnos|what is it|disease",
)


def models(kind: str):
    """(encoder, model, manifest, OOD check) of the active copy, loaded once per process and again when it
    changes."""
    folder = SLOT.active()

    def load():
        return (*load_model(kind, folder), load_ood(folder))

    model, manifest, density = load_once(f"vqa/{kind}", load, folder / MANIFEST)
    return ImageEncoder(), model, manifest, density


def _features(encoder: ImageEncoder, pixels) -> tuple[torch.Tensor, np.ndarray]:
    """(the models' pooled feature, the OOD feature) from one trunk pass."""
    with torch.inference_mode():
        maps = encoder.trunk.taps(resize(pixels, IMAGE_SIZE), ood.TAPS)
    return pool_features(maps[-1]), ood.feature(maps)


def image_distance(case) -> float:
    """The case's distance under the out-of-distribution check (``macro eval ood``)."""
    encoder, _, _, density = models("student")
    return float(density.distance(_features(encoder, case_pixels(case.image))[1])[0])


def ood_threshold() -> float:
    return models("student")[3].threshold


def focus_step(question: str | None) -> int:
    """The step a question asks about (index 0-6); the diagnosis when it names none or several."""
    if not question:
        return 6
    hits = [k for k, pattern in enumerate(STEP_WORDS) if re.search(pattern, question.lower())]
    return hits[0] if len(hits) == 1 else 6


def answer_chain(pixels, kind: str = "student") -> tuple[list[dict], dict, dict]:
    """The seven steps for (1, 3, H, W) pixels in [0, 1] (name, answer, probability, reasoning), the manifest and
    the OOD check (in_distribution, distance, threshold)."""
    encoder, model, manifest, density = models(kind)
    feature, ood_feature = _features(encoder, pixels)
    check = ood.result(density, ood_feature)
    with torch.no_grad():
        logits = model(feature)[0]
    steps, answers = [], {}
    for k, (z, options) in enumerate(zip(logits, manifest["options"])):
        p = torch.softmax(z[0], dim=-1)
        best = int(p.argmax())
        answers[stepcot.ATTRIBUTES[k]] = options[best]
        steps.append(
            {
                "step": k + 1,
                "name": stepcot.STEP_NAMES[k],
                "question": manifest["questions"][k],
                "answer": options[best],
                "probability": round(float(p[best]), 4),
            }
        )
    for k, step in enumerate(steps):
        step["reasoning"] = stepcot.reasoning(answers, stepcot.ATTRIBUTES[k])
    return steps, manifest, check


class StepwiseArgs(BaseModel):
    question: str | None = Field(
        None, description="the user's question, if it asks about one step (location, pattern, ...)"
    )
    model: Literal["student", "teacher"] = Field(
        "student", description="student: image-only, fast; teacher: graph-attention"
    )


class AnswerStepwise(MacroTool):
    name: str = "answer_stepwise"
    description: str = (
        "Reason step by step on a chest X-ray (density, distribution, pattern, location, morphology, signs) "
        "to a diagnosis."
    )
    args_schema: type[BaseModel] = StepwiseArgs
    spec = ToolSpec(
        modalities=("xray",),
        dims=(2,),
        version="1.2.1",
        deterministic=True,
        weights=SLOT.name,
        outputs={"chain": "text"},
        cases=("cxr-phantom",),
        examples=(
            ToolExample(request="Walk me through the diagnosis step by step.", args={}),
            ToolExample(request="What is the most likely diagnosis, with your reasoning?", args={}),
            ToolExample(
                request="Where is the lesion located? Reason stepwise.",
                args={"question": "Where is the lesion located?"},
            ),
            ToolExample(request="Explain your diagnosis using the graph-attention teacher.", args={"model": "teacher"}),
            ToolExample(request="Give me a chain of thought for this chest film.", args={}),
            ToolExample(
                request="What pattern is the opacity, step by step?", args={"question": "What pattern is the opacity?"}
            ),
            ToolExample(request="Reason through the seven diagnostic steps.", args={}),
            ToolExample(request="Diagnose this radiograph and show each step.", args={}),
            ToolExample(request="Talk me through how you reach the diagnosis.", args={}),
            ToolExample(request="Step-by-step reasoning, please.", args={}),
            ToolExample(request="reasoning chain", args={}),
            ToolExample(request="Why do you think that? Show the steps.", args={}),
            ToolExample(request="Wie kommst du zu deiner Diagnose? Zeig die einzelnen Schritte.", args={}),
            ToolExample(request="Explique ton raisonnement étape par étape.", args={}),
            ToolExample(request="Razona paso a paso el diagnóstico.", args={}),
            ToolExample(
                request="What is the distribution of the opacity? Reason it through.",
                args={"question": "What is the distribution of the opacity?"},
            ),
            ToolExample(request="Use the student model for a quick stepwise read.", args={"model": "student"}),
            ToolExample(request="Teacher model, step by step, please.", args={"model": "teacher"}),
            ToolExample(request="Explain how you got to the diagnosis.", args={}),
            ToolExample(request="Step by step, what's the diagnosis?", args={}),
            ToolExample(request="Reason it out step by step.", args={}),
            ToolExample(request="Think through this X-ray step by step.", args={}),
            ToolExample(request="Show your reasoning.", args={}),
            ToolExample(request="How did you reach that conclusion? Go step by step.", args={}),
            ToolExample(request="Give a stepwise analysis of the film.", args={}),
            ToolExample(request="Chain of reasoning for the diagnosis, please.", args={}),
            ToolExample(request="Go through density, distribution and pattern, then diagnose.", args={}),
            ToolExample(request="Break the diagnosis down into steps for me.", args={}),
            ToolExample(request="stepwise", args={}),
            ToolExample(request="step by step pls", args={}),
            ToolExample(request="What's your reasoning here?", args={}),
            ToolExample(request="Use the teacher model.", args={"model": "teacher"}),
            ToolExample(request="Reason with the teacher network.", args={"model": "teacher"}),
            ToolExample(request="Raisonne étape par étape sur cette radio.", args={}),
            ToolExample(request="Explícame el diagnóstico paso a paso.", args={}),
            ToolExample(request="Ragiona passo passo sulla diagnosi.", args={}),
            ToolExample(
                request="Where is the abnormality? Think it through.", args={"question": "Where is the abnormality?"}
            ),
            ToolExample(
                request="What's the density of the lesion, step by step?",
                args={"question": "What's the density of the lesion?"},
            ),
            ToolExample(request="Justify the diagnosis with each diagnostic step.", args={}),
            ToolExample(request="how did you figure out the diagnosis? show me the steps", args={}),
            ToolExample(request="talk me through it step by step", args={}),
            ToolExample(request="Zeig mir deinen Gedankengang zur Diagnose.", args={}),
            ToolExample(request="Étape par étape, quel est le diagnostic ?", args={}),
            ToolExample(request="stepwise diagnosis please", args={}),
            ToolExample(request="step-by-step diagnosis", args={}),
            ToolExample(request="dx, step by step", args={}),
            ToolExample(request="stepwise read", args={}),
            ToolExample(request="reason stepwise", args={}),
        ),
    )

    def execute(self, ctx: ToolContext, args: StepwiseArgs) -> ToolResult:
        steps, manifest, check = answer_chain(case_pixels(ctx.case.image), args.model)
        version = manifest["files"][FILES[args.model]]["sha256"][:12]
        model_version = {"sha256": version, "command": manifest.get("command")}
        if check["in_distribution"] is False:
            text = (
                f"This image is not like the chest radiographs the stepwise models were trained on (feature distance "
                f"{check['distance']:.1f} vs {check['threshold']:.1f} for 99 % of them): no reasoning chain or "
                f"diagnosis is given. ({args.model} model {version})"
            )
            data = {"steps": [], "diagnosis": None, "model": args.model, "model_version": model_version, **check}
            headline = "This image is not like the chest radiographs the stepwise models were trained on: no diagnosis."
            return ToolResult(text=text, headline=headline, data=data)
        focus = steps[focus_step(args.question)]
        lines = [
            f"Step {s['step']} {s['name']}: {s['answer']} ({s['probability']:.2f}). {s['reasoning']}" for s in steps
        ]
        text = (
            " ".join(lines)
            + f" Diagnosis: {steps[-1]['answer']}."
            + (f" Answer ({focus['name'].lower()}): {focus['answer']}." if focus is not steps[-1] else "")
            + f" ({args.model} model {version})"
        )
        data = {
            "steps": steps,
            "diagnosis": steps[-1]["answer"],
            "focus_step": focus["step"],
            "model": args.model,
            "model_version": model_version,
            **check,
        }
        last = steps[-1]
        headline = f"Stepwise diagnosis: {last['answer']} (probability {last['probability']:.2f})" + (
            f"; {focus['name'].lower()}: {focus['answer']} ({focus['probability']:.2f})." if focus is not last else "."
        )
        return ToolResult(text=text, headline=headline, data=data)
