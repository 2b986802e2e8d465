"""``classify_lesion`` (dermoscopy, 7 ISIC classes) and ``classify_findings`` (chest X-ray, multi-label findings).

Both run the federatedly trained classifier of their task (``macro fl train --task derm|cxr``) and report
temperature-calibrated probabilities with the model version (weights sha256 and the training run), so an answer
can be traced to the exact model that produced it. After ``macro fl unlearn`` the home copy of the weights takes
over from the shipped one, and the version tells which model answered.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, Field

from macro import imagenet
from macro.imagenet import case_pixels, resize
from macro.tools import ood
from macro.tools.base import MacroTool, ToolContext, ToolExample, ToolResult, ToolSpec
from macro.tools.classification.model import IMAGE_SIZE, SLOTS, load_classifier, load_ood
from macro.weights import MANIFEST, load_once


def task_model(task: str):
    """(trunk, classifier, manifest, OOD check) of a task's active copy, loaded once per process and again when it
    changes."""
    folder = SLOTS[task].active()

    def load():
        model, manifest = load_classifier(task, folder)
        return model, manifest, load_ood(task, folder)

    model, manifest, density = load_once(f"classification/{task}", load, folder / MANIFEST)
    return imagenet.trunk(), model, manifest, density


def _feature(trunk, case) -> tuple:
    """(the classifier's trunk maps, the OOD feature) from one trunk pass."""
    with torch.no_grad():
        maps = trunk.taps(resize(case_pixels(case.image), IMAGE_SIZE), ood.TAPS)
    return maps[-1], ood.feature(maps)


def image_distance(task: str, case) -> float:
    """The case's distance under the task's out-of-distribution check (``macro eval ood``)."""
    trunk, _, _, density = task_model(task)
    return float(density.distance(_feature(trunk, case)[1])[0])


def ood_threshold(task: str) -> float:
    return task_model(task)[3].threshold


def classify(ctx: ToolContext, task: str) -> tuple[dict[str, float], dict, dict]:
    """(probabilities, model version, OOD check) of the case under the task's classifier."""
    from macro.tools.classification.calibrate import probabilities

    trunk, model, manifest, density = task_model(task)
    maps, feature = _feature(trunk, ctx.case)
    with torch.no_grad():
        _, logits = model(maps)
    probs = probabilities(logits, manifest["multi_label"], manifest["temperature"])[0]
    version = {
        "sha256": manifest["sha256"][:12],
        "trained": manifest.get("created"),
        "method": manifest.get("method"),
        "unlearned_clients": manifest.get("unlearned_clients", []),
    }
    check = ood.result(density, feature)
    return {c: round(float(p), 4) for c, p in zip(manifest["classes"], probs)}, version, check


def outside_text(what: str, check: dict) -> str:
    """The caveat that replaces a label for an image unlike the training images."""
    return (
        f"This image is not like the {what} the classifier was trained on (feature distance {check['distance']:.1f} "
        f"vs {check['threshold']:.1f} for 99 % of them): no label is given."
    )


class ClassifyArgs(BaseModel):
    top_k: int = Field(3, ge=1, le=14, description="how many classes to list in the answer")


class ClassifyLesion(MacroTool):
    name: str = "classify_lesion"
    description: str = (
        "Classify a dermoscopy skin lesion (MEL, NV, BCC, AKIEC, BKL, DF, VASC) with calibrated probabilities."
    )
    args_schema: type[BaseModel] = ClassifyArgs
    spec = ToolSpec(
        modalities=("dermoscopy",),
        dims=(2,),
        version="1.2.1",
        deterministic=True,
        cases=("derm-phantom",),
        weights=SLOTS["derm"].name,
        examples=(
            ToolExample(request="What kind of lesion is this?", args={}),
            ToolExample(request="Is this mole a melanoma?", args={}),
            ToolExample(request="Classify the skin lesion.", args={}),
            ToolExample(request="Give me the diagnosis probabilities for this dermoscopy image.", args={}),
            ToolExample(request="Which of the seven ISIC classes fits best?", args={}),
            ToolExample(request="Top two diagnoses for this lesion?", args={"top_k": 2}),
            ToolExample(request="Benign nevus or something worse?", args={}),
            ToolExample(request="List all class probabilities for the lesion.", args={"top_k": 7}),
            ToolExample(request="Could this be a basal cell carcinoma?", args={}),
            ToolExample(request="Most likely diagnosis only.", args={"top_k": 1}),
            ToolExample(request="Is this skin cancer?", args={}),
            ToolExample(request="lesion dx", args={}),
            ToolExample(request="does this mole look dangerous?", args={}),
            ToolExample(request="Ist das ein Melanom?", args={}),
            ToolExample(request="Est-ce un mélanome ?", args={}),
            ToolExample(request="¿Es maligno este lunar?", args={}),
            ToolExample(request="Top 3 for this lesion.", args={"top_k": 3}),
            ToolExample(request="Benign or malignant?", args={}),
            ToolExample(request="What is this skin lesion?", args={}),
            ToolExample(request="Is this spot cancerous?", args={}),
            ToolExample(request="Should I worry about this mole?", args={}),
            ToolExample(request="Classify it.", args={}),
            ToolExample(request="diagnosis pls", args={}),
            ToolExample(request="Melanoma?", args={}),
            ToolExample(request="What's the most likely skin diagnosis?", args={}),
            ToolExample(request="Is this a nevus?", args={}),
            ToolExample(request="Top 5 diagnoses.", args={"top_k": 5}),
            ToolExample(request="Rate the probability of melanoma.", args={}),
            ToolExample(request="Was ist das für ein Hautfleck?", args={}),
            ToolExample(request="Qu'est-ce que cette lésion cutanée ?", args={}),
            ToolExample(request="¿Qué es esta mancha?", args={}),
            ToolExample(request="È un melanoma?", args={}),
            ToolExample(request="classify this mole pls", args={}),
            ToolExample(request="Is it benign?", args={}),
            ToolExample(request="is this mole bad?", args={}),
            ToolExample(request="should i get this spot checked?", args={}),
            ToolExample(request="is this skin cancer or just a mole", args={}),
            ToolExample(request="what is this dark spot", args={}),
            ToolExample(request="Ist dieser Leberfleck gefährlich?", args={}),
            ToolExample(request="Ce grain de beauté est-il inquiétant ?", args={}),
            ToolExample(request="what's the dx", args={}),
            ToolExample(request="ddx?", args={}),
            ToolExample(request="diagnosis?", args={}),
            ToolExample(request="Melanoma or benign?", args={}),
            ToolExample(request="check this mole for melanoma", args={}),
            ToolExample(request="is this mole melanoma or harmless", args={}),
        ),
    )

    def execute(self, ctx: ToolContext, args: ClassifyArgs) -> ToolResult:
        probs, version, check = classify(ctx, "derm")
        ranked = sorted(probs.items(), key=lambda kv: -kv[1])[: args.top_k]
        if check["in_distribution"] is False:
            headline, top = outside_text("dermoscopy images", check), None
            text = headline + f" (model {version['sha256']})"
        else:
            text = (
                "Lesion class probabilities (calibrated): "
                + ", ".join(f"{c} {p:.2f}" for c, p in ranked)
                + f" (model {version['sha256']})."
            )
            top = ranked[0][0]
            others = ", ".join(f"{c} {p:.2f}" for c, p in ranked[1:])
            headline = f"Most likely {top} (calibrated probability {ranked[0][1]:.2f})" + (
                f"; next {others}." if others else "."
            )
        data = {"probabilities": probs, "top": top, "model_version": version, **check}
        return ToolResult(text=text, headline=headline, data=data)


class ClassifyFindings(MacroTool):
    name: str = "classify_findings"
    description: str = "Detect chest X-ray findings (multi-label) with calibrated probabilities per finding."
    args_schema: type[BaseModel] = ClassifyArgs
    spec = ToolSpec(
        modalities=("xray",),
        dims=(2,),
        version="1.2.0",
        deterministic=True,
        cases=("cxr-phantom",),
        weights=SLOTS["cxr"].name,
        examples=(
            ToolExample(request="What findings are on this chest X-ray?", args={}),
            ToolExample(request="Is there a pleural effusion?", args={}),
            ToolExample(request="Read this chest radiograph.", args={}),
            ToolExample(request="Any signs of cardiomegaly or pneumothorax?", args={}),
            ToolExample(request="Screen the X-ray for abnormalities.", args={}),
            ToolExample(request="Top five findings with probabilities, please.", args={"top_k": 5}),
            ToolExample(request="Is there a nodule or mass?", args={}),
            ToolExample(request="Which finding is most likely?", args={"top_k": 1}),
            ToolExample(request="List the probability of every finding.", args={"top_k": 14}),
            ToolExample(request="Does the film show consolidation?", args={}),
            ToolExample(request="Pneumonia on this X-ray?", args={}),
            ToolExample(request="Is the heart enlarged?", args={}),
            ToolExample(request="do my lungs look healthy on this x-ray?", args={}),
            ToolExample(request="CXR read", args={}),
            ToolExample(request="Check the radiograph for atelectasis.", args={}),
            ToolExample(request="Any fluid around the lungs?", args={}),
            ToolExample(request="Is there a collapsed lung?", args={}),
            ToolExample(request="What does the chest X-ray show?", args={}),
            ToolExample(request="Zeigt das Röntgenbild eine Lungenentzündung?", args={}),
            ToolExample(request="Y a-t-il une cardiomégalie sur la radio ?", args={}),
            ToolExample(request="¿Hay derrame pleural en la radiografía?", args={}),
            ToolExample(request="Ci sono reperti patologici in questa radiografia?", args={}),
            ToolExample(request="Probability of oedema on this film?", args={}),
            ToolExample(request="Which three findings are most probable?", args={"top_k": 3}),
            ToolExample(request="chest film abnormal?", args={}),
            ToolExample(request="Is this chest film normal?", args={}),
            ToolExample(request="What does the radiograph show?", args={}),
            ToolExample(request="Any effusion?", args={}),
            ToolExample(request="Check for pneumothorax.", args={}),
            ToolExample(request="Is there pneumonia?", args={}),
            ToolExample(request="Any abnormality on the chest x-ray?", args={}),
            ToolExample(request="Are the lungs clear?", args={}),
            ToolExample(request="Heart size ok?", args={}),
            ToolExample(request="read the cxr", args={}),
            ToolExample(request="List the findings.", args={}),
            ToolExample(request="Top 3 findings.", args={"top_k": 3}),
            ToolExample(request="Anything wrong with my lungs?", args={}),
            ToolExample(request="Is there an opacity?", args={}),
            ToolExample(request="Any signs of infection on the X-ray?", args={}),
            ToolExample(request="Hat das Röntgenbild einen Befund?", args={}),
            ToolExample(request="Y a-t-il un pneumothorax ?", args={}),
            ToolExample(request="¿La radiografía es normal?", args={}),
            ToolExample(request="C'è un versamento?", args={}),
            ToolExample(request="Probabilities for each thoracic finding, please.", args={"top_k": 14}),
            ToolExample(request="Classify the findings on this film.", args={}),
            ToolExample(request="are my lungs ok?", args={}),
            ToolExample(request="anything wrong on my x-ray?", args={}),
            ToolExample(request="do i have pneumonia?", args={}),
            ToolExample(request="is the radiograph normal?", args={}),
            ToolExample(request="Sind die Lungen frei?", args={}),
            ToolExample(request="¿Hay neumonía?", args={}),
        ),
    )

    def execute(self, ctx: ToolContext, args: ClassifyArgs) -> ToolResult:
        probs, version, check = classify(ctx, "cxr")
        ranked = sorted(probs.items(), key=lambda kv: -kv[1])[: args.top_k]
        if check["in_distribution"] is False:
            headline, present = outside_text("chest X-rays", check), []
            text = headline + f" (model {version['sha256']})"
        else:
            present = [c for c, p in probs.items() if p >= 0.5]
            text = (
                "Findings (calibrated probability): "
                + ", ".join(f"{c} {p:.2f}" for c, p in ranked)
                + f"; above 0.5: {', '.join(present) or 'none'} (model {version['sha256']})."
            )
            best, p_best = ranked[0]
            headline = (
                "Findings at calibrated probability 0.5 or above: "
                + ", ".join(f"{c} {probs[c]:.2f}" for c in sorted(present, key=lambda c: -probs[c]))
                + "."
                if present
                else f"No finding reaches calibrated probability 0.5 (highest {best} {p_best:.2f})."
            )
        data = {"probabilities": probs, "present": present, "model_version": version, **check}
        return ToolResult(text=text, headline=headline, data=data)
