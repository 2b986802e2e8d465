"""Where two tools of one turn speak about the same finding, the answer says whether they agree and which it used.

Two pairs exist today:
- chest X-ray: ``classify_findings`` (calibrated multi-label probabilities, present at >= 0.5) and
  ``answer_stepwise`` (a diagnosis at the end of a seven-step chain). The diagnosis is mapped to the findings that
  would show it (:data:`DIAGNOSIS_FINDINGS`); they agree when one of those is present, or when the chain says
  "Normal" and nothing is. On a disagreement the answer names the source it uses: the tool whose training images
  this image resembles more (the lower out-of-distribution distance relative to each tool's threshold; both
  passed their checks, so this is which of two in-range models is on firmer ground), the classifier on a tie or
  when a distance is missing, because its probabilities are calibrated on held-out data and the chain's are not.
- brain MRI: ``segment_brain_tumor`` against the case's reference mask (its data carries Dice and the reference
  volumes when the case has one), and ``measure_volume``, which says which mask it measured.
A tool that declined (out of distribution) or failed takes no part.
"""

from __future__ import annotations

from macro.tools.executor import Step

DIAGNOSIS_FINDINGS = {
    "Normal": (),
    "Pneumonia": ("Consolidation", "Infiltration"),
    "Tuberculosis": ("Infiltration", "Consolidation", "Nodule"),
    "Lung abscess": ("Consolidation", "Mass"),
    "Lung cancer": ("Mass", "Nodule"),
    "Metastases": ("Nodule", "Mass"),
    "Heart failure": ("Cardiomegaly", "Effusion"),
    "Pleural effusion": ("Effusion",),
    "Pneumothorax": ("Pneumothorax",),
}
DICE_AGREES = 0.8  # a segmentation this close to the reference is stated as agreeing with it


def _last(steps: list[Step], tool: str) -> Step | None:
    spoke = [s for s in steps if s.ok and s.tool == tool and s.data.get("in_distribution") is not False]
    return spoke[-1] if spoke else None


def _closeness(step: Step) -> float:
    """The image's OOD distance as a share of the tool's threshold (lower: more like its training images)."""
    d, t = step.data.get("distance"), step.data.get("threshold")
    return d / t if d is not None and t else float("inf")


def _source(findings: Step, chain: Step) -> str:
    a, b = _closeness(findings), _closeness(chain)
    if b < a:
        return (
            f"This answer uses the stepwise chain: the image is closer to its training images ({b:.2f} of its "
            f"threshold against {a:.2f} for the classifier's)."
        )
    closer = f": the image is closer to its training images ({a:.2f} of its threshold against {b:.2f})" if a < b else ""
    return f"This answer uses the classifier (calibrated probabilities) for which findings are present{closer}."


def chest(steps: list[Step]) -> str | None:
    findings, chain = _last(steps, "classify_findings"), _last(steps, "answer_stepwise")
    if findings is None or chain is None or not chain.data.get("diagnosis"):
        return None
    diagnosis, present = chain.data["diagnosis"], list(findings.data.get("present", []))
    probs = findings.data.get("probabilities", {})
    expected = DIAGNOSIS_FINDINGS.get(diagnosis)
    if expected is None:
        return None
    if diagnosis == "Normal":
        if not present:
            return "Consistency: the stepwise chain (Normal) and the classifier (no finding at 0.5 or above) agree."
        shown = ", ".join(f"{c} {probs[c]:.2f}" for c in present)
        disagree = f"Consistency: the tools disagree: the stepwise chain says Normal, the classifier finds {shown}. "
        return disagree + _source(findings, chain)
    support = [c for c in expected if c in present]
    if support:
        shown = ", ".join(f"{c} {probs[c]:.2f}" for c in support)
        return f"Consistency: the stepwise diagnosis {diagnosis} is supported by the classifier ({shown})."
    best = max(expected, key=lambda c: probs.get(c, 0.0))
    return (
        f"Consistency: the tools disagree: the stepwise chain says {diagnosis}, but the classifier puts "
        f"{' and '.join(expected)} below 0.5 (highest {best} {probs.get(best, 0.0):.2f}). " + _source(findings, chain)
    )


def brain(steps: list[Step]) -> str | None:
    seg = _last(steps, "segment_brain_tumor")
    reference = seg.data.get("reference") if seg is not None else None
    if not reference:
        return None
    dice, volumes, ref_volumes = reference["dice"], seg.data["volumes_ml"], reference["volumes_ml"]
    agree = (dice["WT"] or 0.0) >= DICE_AGREES
    shown = ", ".join(f"{r} {'n/a' if d is None else f'{d:.2f}'}" for r, d in reversed(dice.items()))
    measured = _last(steps, "measure_volume")
    source = f" measure_volume used the {measured.data['mask_source']}." if measured is not None else ""
    verdict = "agrees with" if agree else "differs from"
    return (
        f"Consistency: the segmentation {verdict} the case's reference mask {reference['file']} (Dice {shown}; "
        f"WT {volumes['WT']:.2f} vs {ref_volumes['WT']:.2f} mL).{source}"
    )


def reconcile(steps: list[Step]) -> list[str]:
    """One line per pair of tools of this turn that spoke about the same finding."""
    return [line for line in (chest(steps), brain(steps)) if line]
